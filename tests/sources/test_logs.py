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
    t = LogTailer(LogSourceConfig(path=str(log), service="shop", poll_interval_seconds=0.05, warmup_seconds=0), got.append)
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


