"""``heald eval logs``: precision and recall of the log source's signals beside a level filter,
on heald's own labelled sets, on files given by the user, and on loghub-layout sets read from a
directory or over HTTP (never shipped)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from heald.evaluate import default_log_sets
from tests.conftest import run_heald


def _labelled(lines: list[tuple[str, float, str]]) -> str:
    """BGL's layout: LABEL EPOCH rest-of-line."""
    return "".join(f"{label} {1_700_000_000 + t:.0f} node-1 {text}\n" for label, t, text in lines)


# a routine error every 20 s (normal: the team lives with it), routine info, then a new failure
ROUTINE = [("-", float(t), f"RAS APP ERROR mail could not deliver to user{t}: mailbox full") for t in range(0, 600, 20)]
INFO = [("-", t + 5.0, f"RAS KERNEL INFO instruction cache parity error corrected at {t}") for t in range(0, 600, 10)]
FAILURE = [("DBDOWN", 650.0 + k, "RAS APP FATAL database connection lost: Connection refused") for k in range(4)]


def test_default_sets_heald_beside_the_level_filter(tmp_path: Path) -> None:
    r = run_heald("eval", "logs", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = {p.stem for p in default_log_sets()}
    assert {d["name"] for d in data["datasets"]} == names and len(names) >= 3
    for d, path in zip(sorted(data["datasets"], key=lambda d: d["name"]), default_log_sets(), strict=True):
        labels = [line.split(" ", 1)[0] for line in path.read_text().splitlines() if line.strip()]
        assert d["lines"] == len(labels) and d["anomalous"] == sum(lab != "-" for lab in labels)
        for method in ("heald", "level_filter"):
            m = d[method]
            assert m["true_positives"] <= min(m["raised"], d["anomalous"])
            if m["raised"]:
                assert m["precision"] == round(m["true_positives"] / m["raised"], 4)
            assert m["recall"] == round(m["true_positives"] / d["anomalous"], 4)
    shop = next(d for d in data["datasets"] if d["name"] == "shop-python")
    # a routine ERROR learned in the warm-up and a traceback as one record: heald beats the filter
    assert shop["heald"]["f1"] > shop["level_filter"]["f1"]
    assert shop["heald"]["categories_caught"] == shop["categories"]


def test_a_users_labelled_log_and_the_table(tmp_path: Path) -> None:
    f = tmp_path / "mine.log"
    f.write_text(_labelled(sorted(ROUTINE + INFO + FAILURE, key=lambda x: x[1])))
    r = run_heald("eval", "logs", "--dataset", str(f), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (d,) = json.loads(r.stdout)["datasets"]
    assert d["anomalous"] == 4 and d["categories"] == ["DBDOWN"]
    # heald: the mailbox error is normal after the warm-up, INFO is never a signal, the new FATAL is
    assert d["heald"] == {**d["heald"], "raised": 4, "precision": 1.0, "recall": 1.0, "signals": 1,
                          "signals_on_anomalies": 1}
    # the level filter raises every routine ERROR too
    assert d["level_filter"]["raised"] == len(ROUTINE) + 4 and d["level_filter"]["recall"] == 1.0
    table = run_heald("eval", "logs", "--dataset", str(f), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "mine" in table.stdout and "level filter" in table.stdout and "100.0%" in table.stdout


def test_malformed_or_missing_datasets_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text("- 1700000000 fine line\nnolabel\n")
    r = run_heald("eval", "logs", "--dataset", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "bad.log:2" in r.stderr and "LABEL LINE" in r.stderr
    r = run_heald("eval", "logs", "--loghub", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode == 2 and "--loghub" in r.stderr and "BGL_2k.log" in r.stderr


@pytest.fixture
def loghub_dir(tmp_path: Path) -> Path:
    """A directory in loghub's layout with sets written here (loghub's own files are not shipped)."""
    root = tmp_path / "loghub"
    (root / "BGL").mkdir(parents=True)
    (root / "Thunderbird").mkdir()
    (root / "BGL" / "BGL_2k.log").write_text(_labelled(sorted(ROUTINE + INFO + FAILURE, key=lambda x: x[1])))
    (root / "Thunderbird" / "Thunderbird_2k.log").write_text(_labelled(INFO))
    return root


@pytest.fixture
def served(loghub_dir: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(loghub_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_loghub_from_a_directory_and_over_http(loghub_dir: Path, served: str, tmp_path: Path) -> None:
    for where in (str(loghub_dir), served):
        r = run_heald("eval", "logs", "--loghub", where, "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        sets = {d["name"]: d for d in json.loads(r.stdout)["datasets"]}
        assert {"loghub BGL_2k", "loghub Thunderbird_2k"} <= set(sets)
        assert sets["loghub BGL_2k"]["heald"]["precision"] == 1.0
        quiet = sets["loghub Thunderbird_2k"]
        assert quiet["anomalous"] == 0 and quiet["heald"]["raised"] == 0 and quiet["heald"]["recall"] is None
    (loghub_dir / "Thunderbird" / "Thunderbird_2k.log").unlink()
    r = run_heald("eval", "logs", "--loghub", served, cwd=tmp_path)
    assert r.returncode == 2 and "HTTP 404" in r.stderr and "Thunderbird_2k.log" in r.stderr


def test_the_settings_of_a_configured_log(tmp_path: Path) -> None:
    (tmp_path / "heald.yaml").write_text("logs:\n  - path: /var/log/db.log\n    name: db\n"
                                         "    never_signal: ['database connection lost']\n")
    f = tmp_path / "mine.log"
    f.write_text(_labelled(sorted(ROUTINE + INFO + FAILURE, key=lambda x: x[1])))
    r = run_heald("eval", "logs", "--dataset", str(f), "--log", "db", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (d,) = json.loads(r.stdout)["datasets"]
    assert d["heald"]["raised"] == 0 and d["heald"]["signals"] == 0  # the operator said it never matters
    r = run_heald("eval", "logs", "--dataset", str(f), "--log", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "--log" in r.stderr and "'nope'" in r.stderr
