"""Runbooks name the log records that matter (issue 17, "let runbooks name templates that
matter"): a runbook matching log signals with ``match.log`` regexes makes its records signal
whatever their level or the warm-up, in every log tailer the runtime starts."""

from __future__ import annotations

import re
from pathlib import Path

from heald.diagnose.runbooks import load_runbooks, runbook_log_patterns
from heald.engine.runtime import Runtime
from heald.sources.logs import LogMiner
from tests.conftest import make_config

RUNBOOKS = """
runbooks:
  - name: replica-lag
    description: "a replica fell behind"
    match:
      source: logs
      log: ["replication", "lag of \\\\d+ s"]
    diagnosis: {category: unhandled_exception, confidence: 0.7, explanation: "replica behind"}
  - name: from-alerts
    description: "alerts only"
    match:
      source: alertmanager
      log: "never from a log"
    diagnosis: {category: unhandled_exception, confidence: 0.7, explanation: "x"}
"""

WARM = [f"2026-11-28 10:00:{i % 60:02d} INFO replication lag of {i} s on node-{i}" for i in range(200)]
LINE = "2026-11-28 10:05:00 INFO replication lag of 900 s on node-7"


def _runbooks(tmp_path: Path) -> Path:
    path = tmp_path / "rb.yaml"
    path.write_text(RUNBOOKS)
    return path


def test_only_log_runbooks_name_records_and_all_their_regexes_must_be_found(tmp_path: Path) -> None:
    patterns = runbook_log_patterns(load_runbooks([_runbooks(tmp_path)], include_defaults=False))
    assert len(patterns) == 1  # the alertmanager runbook names no log record
    rx = re.compile(patterns[0])
    assert rx.search(LINE) and not rx.search("INFO replication restarted") and not rx.search("lag of 5 s")


def test_the_runtimes_log_tailers_signal_records_a_runbook_names_even_at_info_in_the_warm_up(tmp_path: Path) -> None:
    log = tmp_path / "db.log"
    log.write_text("")
    cfg = make_config(tmp_path, runbooks=[str(_runbooks(tmp_path))],
                      logs=[{"path": str(log), "service": "db"}])
    rt = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=True)
    try:
        [tailer] = rt.log_tailers
        miner = tailer.miner
        fired = miner.feed([*WARM, LINE])  # INFO records, in the warm-up: without the runbook never a signal
        assert fired and fired[0].service == "db" and "replication lag" in (fired[0].summary or "")
        plain = LogMiner(cfg.logs[0], None)  # the same log without the runbook's records
        assert plain.feed([*WARM, LINE]) == []
    finally:
        rt.stop()
