"""Logs as a source: drain3 template mining, new templates, rate jumps, tracebacks as one
record, persistence across restarts, tailing real files (with rotation) and stdin."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from heald.config import LogSourceConfig
from heald.models import SignalStatus
from heald.sources.logs import LogMiner, LogTailer
from tests.conftest import heald_cmd, wait_for

TRACEBACK = """\
2024-05-02 10:00:02,003 ERROR shop.db could not fetch products
Traceback (most recent call last):
  File "/srv/shop/db.py", line 12, in connect
    conn = psycopg2.connect(dsn)
psycopg2.OperationalError: could not connect to server: Connection refused
"""


def cfg(**kw) -> LogSourceConfig:  # type: ignore[no-untyped-def]
    kw.setdefault("warmup_seconds", 0)
    return LogSourceConfig(path="app.log", service="shop", **kw)


def test_new_error_template_fires_once_with_its_lines_as_evidence() -> None:
    m = LogMiner(cfg())
    out = m.feed(["2024-05-02 10:00:00 INFO started\n", "2024-05-02 10:00:01 INFO GET /a 200\n"], now=100)
    out += m.feed(TRACEBACK.splitlines(keepends=True), now=101)
    out += m.flush(now=101)
    assert len(out) == 1
    sig = out[0]
    assert sig.source == "logs" and sig.kind == "error_log" and sig.service == "shop"
    assert sig.annotations["trigger"] == "new_template"
    assert sig.annotations["template"] == "psycopg2.OperationalError: could not connect to server: Connection refused"
    assert "Traceback (most recent call last):" in sig.annotations["log"]  # the whole record is evidence
    assert "ERROR shop.db could not fetch products" in sig.annotations["log"]
    # the same error again (other timestamp, other pid): same template, no new signal
    again = TRACEBACK.replace("10:00:02,003", "10:05:09,117")
    assert m.feed(again.splitlines(keepends=True), now=102) + m.flush(now=102) == []
    assert m.errors == 2 and m.records == 4


def test_masked_values_make_one_template() -> None:
    m = LogMiner(cfg())
    lines = [f"2024-05-02 10:00:{i:02d} ERROR upstream 10.0.0.{i}:8080 timed out after {i * 100}ms req={i:016x}\n"
             for i in range(10, 20)]
    out = m.feed(lines, now=1) + m.flush(now=1)
    assert len(out) == 1 and len(m.miner.drain.clusters) == 1


def test_rate_jump_of_a_known_template() -> None:
    m = LogMiner(cfg(rate_window_seconds=10, rate_factor=4, rate_min_count=8))
    line = "ERROR payment gateway returned 502 for order {}\n"
    t = 0.0
    fired = []
    for i in range(30):  # a steady trickle: one every 5 s for 150 s
        fired += m.feed([line.format(i)], now=t)
        t += 5
    assert [s.annotations["trigger"] for s in fired] == ["new_template"]
    burst = []
    for i in range(12):  # twelve in 3 s
        burst += m.feed([line.format(100 + i)], now=t + i * 0.25)
    burst += m.flush(now=t + 3)
    jumps = [s for s in burst if s.annotations["trigger"] == "rate_jump"]
    assert len(jumps) == 1 and "error rate jump" in jumps[0].summary
    assert jumps[0].fingerprint == fired[0].fingerprint  # same template → same incident
    assert len(jumps[0].annotations["log"].splitlines()) >= 8


def test_quiet_template_resolves() -> None:
    m = LogMiner(cfg(resolve_after_seconds=30))
    fired = m.feed(["FATAL cannot open config /etc/shop.yaml\n"], now=0) + m.flush(now=0)
    assert fired[0].severity.value == "critical"
    assert m.flush(now=10) == []
    resolved = m.flush(now=31)
    assert len(resolved) == 1 and resolved[0].status == SignalStatus.resolved
    assert resolved[0].fingerprint == fired[0].fingerprint


def test_templates_persist_across_restarts(tmp_path: Path) -> None:
    a = LogMiner(cfg(), tmp_path)
    assert len(a.feed(["ERROR disk quota exceeded for /data\n"], now=0) + a.flush(now=0)) == 1
    a.save()
    b = LogMiner(cfg(), tmp_path)
    assert b.feed(["ERROR disk quota exceeded for /srv\n"], now=1) + b.flush(now=1) == []


def test_tailer_follows_a_file_through_rotation(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("ERROR old error before heald started\n")
    got = []
    t = LogTailer(LogSourceConfig(path=str(log), service="shop", poll_interval_seconds=0.05), got.append)
    t.start()
    try:
        time.sleep(0.3)
        with log.open("a") as fh:
            fh.write("INFO fine\nERROR could not reach payments: [Errno 111] Connection refused\n")
            fh.write("ERROR half a li")
            fh.flush()
            wait_for(lambda: got, what="signal from the appended line")
            fh.write("ne: No space left on device\n")
        wait_for(lambda: len(got) == 2, what="the completed partial line")
        assert "old error" not in "".join(s.annotations["log"] for s in got)  # tail from the end
        assert got[1].annotations["log"] == "ERROR half a line: No space left on device"
        log.rename(tmp_path / "app.log.1")
        log.write_text("ERROR after rotation: permission denied on /var/run/shop.pid\n")
        wait_for(lambda: len(got) == 3, what="signal from the new file")
        assert "after rotation" in got[2].annotations["log"]
    finally:
        t.stop()


def test_stdin_and_heald_logs_scan(tmp_path: Path) -> None:
    text = TRACEBACK + "2024-05-02 10:00:06 ERROR write failed: [Errno 28] No space left on device\n"
    r = subprocess.run(heald_cmd("logs", "scan", "-", "--json"), input=text, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [s["category"] for s in data["signals"]] == ["database_unavailable", "disk_full"]
    assert data["error_records"] == 2 and len(data["templates"]) == 2


def test_tailer_reads_stdin_stream() -> None:
    import io

    got = []
    t = LogTailer(LogSourceConfig(path="-", service="job", warmup_seconds=0), got.append,
                  stdin=io.StringIO("INFO ok\nERROR build step failed: exit code 2\n"))
    t.start()
    wait_for(lambda: got, what="signal from stdin")
    t.stop()
    assert got[0].labels["log"] == "stdin" and got[0].service == "job"




# -- levels, masking, warm-up, novelty, named templates, hostile lines ---------------------------
def test_the_records_own_level_decides_not_words_in_its_text() -> None:
    from heald.sources.logs import parse_level

    assert parse_level("<11>Mar  2 09:00:05 web-3 app[1]: disk gone")[0] == "error"  # PRI 11 = user.err
    assert parse_level("<14>Mar  2 09:00:05 web-3 app[1]: error count is 0")[0] == "info"  # user.info wins
    assert parse_level('{"level":"warn","msg":"slow"}') == ("warning", "slow")
    assert parse_level('{"level":50,"msg":"upstream down"}') == ("error", "upstream down")  # pino
    assert parse_level('{"PRIORITY":"2","MESSAGE":"x"}')[0] == "critical"  # journald export
    assert parse_level('{"log":{"level":"error"},"message":"y"}') == ("error", "y")  # ECS
    assert parse_level('ts=1 level=error msg="db down" retry=3') == ("error", "db down")
    assert parse_level("E0102 15:04:05.000 1 main.go:12] boom")[0] == "error"  # klog
    assert parse_level("2024-05-02 10:00:00 [error] mod_jk child in error state")[0] == "error"
    assert parse_level("ERROR:root:it broke") == ("error", "root:it broke")
    assert parse_level("- 1117838570 2005.06.03 R02-M1-N0 2005-06-03-15.42.50 R02-M1-N0 RAS KERNEL INFO "
                       "instruction cache parity error corrected")[0] == "info"
    assert parse_level("could not connect: an error occurred") == (None, "could not connect: an error occurred")
    # the miner: an INFO line full of error words is not a signal, a WARNING line is
    m = LogMiner(cfg())
    assert m.feed(["2024-05-02 10:00:00 INFO retry 1/3 failed with error, succeeded after reconnect\n"], now=1) \
        + m.flush(now=1) == []
    out = m.feed(["2024-05-02 10:00:01 WARNING disk usage 91% on /var/lib/shop\n"], now=2) + m.flush(now=2)
    assert len(out) == 1 and out[0].severity.value == "warning" and out[0].annotations["level"] == "warning"
    assert LogMiner(cfg(min_level="error")).feed(["WARNING disk usage 91% on /data\n"], now=1) == []


def test_masks_merge_timestamps_node_ids_paths_and_lists() -> None:
    from heald.sources.logs import mask

    assert mask("R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 data TLB error interrupt") == \
        "<NODE> <TS> data TLB error interrupt"
    assert mask("Error loading /bgl/apps/x/run.rts: invalid image, took 0x1f 12ms") == \
        "Error loading <PATH> invalid image, took <HEX> <NUM>"
    assert mask("failed to resolve an14 an15 an16 an17") == "failed to resolve <ID>"  # a run of one mask
    assert mask("req 3f2a9c81d0e4aa from 10.0.0.7:8080 at Mar  2 09:00:05") == "req <HEX> from <IP> at <TS>"
    m = LogMiner(cfg())
    lines = [f"ERROR node R0{i}-M1-N{i}-C:J1{i}-U11 lost /p/gb{i}/data after {i * 7} retries: an{i} an{i + 1}"
             + " an9" * i + "\n" for i in range(1, 8)]
    out = m.feed(lines, now=1) + m.flush(now=1)
    assert len(out) == 1 and len(m.miner.drain.clusters) == 1


def test_warm_up_learns_what_is_normal_and_then_novelty_fires() -> None:
    m = LogMiner(cfg(warmup_seconds=300, warmup_records=1000))
    routine = "2024-05-02 10:00:00 ERROR mail could not deliver newsletter to user{}@example.com: mailbox full\n"
    fired = []
    for i in range(32):  # one every 10 s: learned during the first 300 s
        fired += m.feed([routine.format(i)], now=i * 10.0)
    assert fired == [] and m.warm
    fired += m.feed([routine.format(99)], now=400) + m.flush(now=400)
    assert fired == []  # the routine error stays known after the warm-up
    fired += m.feed(["2024-05-02 10:07:00 ERROR db could not connect to 10.0.0.5:5432\n"], now=420) \
        + m.flush(now=420)
    assert [s.annotations["trigger"] for s in fired] == ["new_template"]
    # warm-up by records ends first when the log is busy
    busy = LogMiner(cfg(warmup_seconds=300, warmup_records=5))
    for i in range(7):  # five records learned; the sixth is judged
        busy.feed([f"INFO tick {i}\n"], now=float(i))
    assert busy.warm


def test_a_miner_restored_from_saved_templates_has_no_warm_up(tmp_path: Path) -> None:
    a = LogMiner(cfg(), tmp_path)
    a.feed(["ERROR disk quota exceeded for /data\n"], now=0)
    a.flush(now=0)
    a.save()
    assert LogMiner(cfg(warmup_seconds=300), tmp_path).warm
    assert not LogMiner(cfg(warmup_seconds=300)).warm


def test_rate_jump_of_a_template_learned_in_warm_up() -> None:
    m = LogMiner(cfg(warmup_seconds=100, warmup_records=10_000, rate_window_seconds=10, rate_factor=4,
                     rate_min_count=8))
    line = "ERROR payment gateway returned 502 for order {}\n"
    fired = []
    for i in range(40):  # a trickle every 5 s: learned, then known
        fired += m.feed([line.format(i)], now=i * 5.0)
    assert fired == []
    for i in range(12):
        fired += m.feed([line.format(100 + i)], now=200 + i * 0.25)
    assert [s.annotations["trigger"] for s in fired] == ["rate_jump"]


def test_runbook_named_templates_always_or_never_signal() -> None:
    m = LogMiner(cfg(warmup_seconds=300, resolve_after_seconds=30, always_signal=[r"circuit open to \w+"],
                     never_signal=[r"mailbox full", r"circuit open"]))
    out = m.feed(["CRITICAL circuit open to payments after 5 failures\n"], now=1) + m.flush(now=1)
    assert [s.annotations["trigger"] for s in out] == ["always"]  # during the warm-up, and despite never_signal
    assert out[0].severity.value == "critical"
    assert m.feed(["CRITICAL circuit open to payments after 6 failures\n"], now=2) + m.flush(now=2) == []  # firing
    m.flush(now=40)  # resolved after 30 s of quiet
    again = m.feed(["CRITICAL circuit open to payments after 9 failures\n"], now=50) + m.flush(now=50)
    assert [s.annotations["trigger"] for s in again] == ["always"]  # it matters every time
    late = LogMiner(cfg(never_signal=[r"mailbox full"]))
    assert late.feed(["ERROR could not deliver to a@b.c: mailbox full\n"], now=1) + late.flush(now=1) == []
    assert late.errors == 0


def test_invalid_named_template_regex_is_a_config_error() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"(?s)never_signal.*item 1: invalid regex '\(unclosed': missing \)"):
        LogSourceConfig(path="a.log", never_signal=["ok", "(unclosed"])
    with pytest.raises(ValidationError, match=r"(?s)error_pattern.*invalid regex '\[': .* at position 0 "
                                               r"\(expected a Python regular expression\)"):
        LogSourceConfig(path="a.log", error_pattern="[")


def test_hostile_lines_huge_control_characters_and_invalid_utf8(tmp_path: Path) -> None:
    m = LogMiner(cfg(max_line_bytes=1024))
    huge = "ERROR " + "é" * 100_000 + "\n"
    out = m.feed([huge, "\x1b[31mERROR\x1b[0m payments\x00 down\x07 now\n"], now=1) + m.flush(now=1)
    assert len(out) == 2
    first = out[0].annotations["log"]
    assert len(first.encode()) <= 1024 and first.endswith("é")  # cut on bytes, never inside a character
    assert out[1].annotations["log"] == "ERROR payments\ufffd down\ufffd now"  # ANSI gone, controls visible
    assert out[1].severity.value == "error"  # the level behind the colour codes
    # the tailer: a 5 MB line without a newline is never held whole; invalid UTF-8 is replaced
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    got: list = []  # type: ignore[type-arg]
    t = LogTailer(LogSourceConfig(path=str(log), service="shop", poll_interval_seconds=0.05, warmup_seconds=0,
                                  max_line_bytes=4096), got.append)
    t.start()
    try:
        time.sleep(0.2)
        with log.open("ab") as fh:
            fh.write(b"ERROR " + b"x" * 5_000_000 + b"\n")
            fh.write(b"ERROR bad bytes \xff\xfe in payload from upstream\n")
        wait_for(lambda: len(got) == 2, what="signals of the huge and the invalid line")
        assert len(got[0].annotations["log"]) <= 4096
        assert got[1].annotations["log"] == "ERROR bad bytes \ufffd\ufffd in payload from upstream"
        assert t.lines_read == 2
    finally:
        t.stop()


def test_tailer_never_holds_more_than_max_line_bytes_of_an_unfinished_line(tmp_path: Path) -> None:
    import io

    log = tmp_path / "app.log"
    log.write_bytes(b"ERROR " + b"y" * 3_000_000)  # a writer that never ends its line
    t = LogTailer(LogSourceConfig(path=str(log), warmup_seconds=0, max_line_bytes=2048), lambda s: None)
    with log.open("rb") as fh:
        partial = t._drain(fh, b"")
        assert len(partial) <= 2049  # cut, not 3 MB waiting for a newline
        with log.open("ab") as w:
            w.write(b"y" * 10_000 + b"\nERROR next line after the long one\n")
        partial = t._drain(fh, partial)
    assert partial == b"" and t.lines_read == 2
    assert t.miner.flush(now=1)[0].annotations["log"] == "ERROR next line after the long one"  # not the skipped tail
    got: list = []  # type: ignore[type-arg]
    s = LogTailer(LogSourceConfig(path="-", warmup_seconds=0, max_line_bytes=1024), got.append,
                  stdin=io.StringIO("ERROR " + "z" * 500_000 + "\nERROR second\n"))
    s._run_stream(s.stdin)  # type: ignore[arg-type]
    assert s.lines_read == 2 and len(got) == 2 and len(got[0].annotations["log"]) <= 1024


def test_tailer_warms_up_on_the_files_past_and_is_live_at_once_without_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    routine = "".join(f"2024-05-02 10:00:{i:02d} ERROR mail could not deliver to u{i}@x.org: mailbox full\n"
                      for i in range(50))
    log.write_text("garbage-tail-of-a-line\n" + routine)
    got: list = []  # type: ignore[type-arg]
    t = LogTailer(LogSourceConfig(path=str(log), service="shop", poll_interval_seconds=0.05, warmup_records=40),
                  got.append)
    t.start()
    try:
        wait_for(lambda: t.miner.warm, what="warm-up on the file's past")
        assert t.miner.records == 40 and got == []  # the last 40 lines, learned, no signal
        with log.open("a") as fh:
            fh.write("2024-05-02 10:01:00 ERROR mail could not deliver to u99@x.org: mailbox full\n")
            fh.write("2024-05-02 10:01:01 ERROR db could not connect to 10.0.0.5:5432\n")
        wait_for(lambda: got, what="the new template's signal")
        time.sleep(0.3)
        assert [s.annotations["template"] for s in got] == ["db could not connect to <IP>"]
    finally:
        t.stop()
    empty = tmp_path / "new.log"
    empty.touch()
    fresh = LogTailer(LogSourceConfig(path=str(empty), poll_interval_seconds=0.05), lambda s: None)
    fresh.start()
    try:
        wait_for(lambda: fresh.miner.warm, what="no past: live at once")
    finally:
        fresh.stop()


def test_logs_scan_names_a_bad_min_level(tmp_path: Path) -> None:
    r = subprocess.run(heald_cmd("logs", "scan", "-", "--min-level", "loud"), input="ERROR x\n", capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "--min-level" in r.stderr and "'loud'" in r.stderr and "warning" in r.stderr


def test_a_flood_of_garbage_raises_a_bounded_number_of_signals_and_keeps_bounded_state() -> None:
    import random

    rng = random.Random(3)
    words = ["".join(rng.choice("qwxzjkvbpy") for _ in range(rng.randint(3, 9))) for _ in range(4000)]
    m = LogMiner(cfg(max_new_template_signals=5, max_templates=50, rate_window_seconds=60))
    out = []
    for i in range(600):  # 600 unrelated error messages of varying length in 60 s
        n = rng.randint(2, 12)
        out += m.feed(["ERROR " + " ".join(rng.choice(words) for _ in range(n)) + "\n"], now=i * 0.1)
    out += m.flush(now=60)
    triggers = [s.annotations["trigger"] for s in out if s.status == SignalStatus.firing]
    assert triggers.count("new_template") == 5 and triggers.count("template_flood") == 1
    flood = next(s for s in out if s.annotations["trigger"] == "template_flood")
    assert flood.labels["template_id"] == "flood" and "more than 5 new error templates" in flood.summary
    assert len(m.templates) <= 50 and len(m.miner.drain.clusters) <= 50
    # after the window the budget is back
    later = m.feed(["ERROR brand new failure of the billing export\n"], now=200) + m.flush(now=200)
    assert "new_template" in [s.annotations.get("trigger") for s in later]
