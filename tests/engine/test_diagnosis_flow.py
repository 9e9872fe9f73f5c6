"""Diagnosis inside the healing workflow: an error in a service's log becomes an incident, the
signature knowledge base diagnoses it from the log lines, a category runbook gives the remedy,
the service is restarted and the incident resolves when its log goes quiet."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from heald.models import IncidentState
from tests.conftest import make_config, wait_for

WORKER = textwrap.dedent("""
    import os, sys, time
    log, trigger, starts = sys.argv[1:4]
    with open(starts, "a") as f:
        f.write("start\\n")
    while True:
        if os.path.exists(trigger):
            os.remove(trigger)
            with open(log, "a") as f:
                f.write("2024-05-02 10:00:02,003 ERROR worker batch 17 aborted\\n"
                        "Traceback (most recent call last):\\n"
                        '  File "/srv/worker/batch.py", line 88, in run\\n'
                        "    rows = [decode(r) for r in cursor]\\n"
                        "MemoryError\\n")
        time.sleep(0.05)
""")


def test_log_error_is_diagnosed_by_the_kb_and_healed(tmp_path: Path, start_runtime) -> None:
    log, trigger, starts = tmp_path / "worker.log", tmp_path / "trigger", tmp_path / "starts"
    log.touch()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    rb = tmp_path / "rb.yaml"
    rb.write_text(textwrap.dedent("""
        runbooks:
          - name: oom-restart
            match: {category: out_of_memory, source: logs}
            remedies:
              - {remedy: restart_process, risk: low, params: {service: "${service}"}}
    """))
    cfg = make_config(tmp_path, services={"worker": {"command": [sys.executable, str(script), str(log), str(trigger),
                                                                 str(starts)]}},
                      runbooks=[str(rb)], healing={"verify_timeout_seconds": 15.0},
                      logs=[{"path": str(log), "service": "worker", "poll_interval_seconds": 0.05,
                             "resolve_after_seconds": 1.5}])
    rt = start_runtime(cfg)
    wait_for(lambda: starts.exists(), what="worker up")
    time.sleep(0.3)  # the tailer starts at the end of the file
    trigger.touch()
    inc = wait_for(lambda: rt.store.list_incidents(), what="incident from the log")[0]
    done = wait_for(lambda: (i := rt.store.get_incident(inc.id)).state.terminal and i, timeout=40, what="incident end")
    assert done.state == IncidentState.resolved, done.closed_reason
    detail = rt.store.incident_detail(inc.id)
    d = detail["diagnoses"][0]
    assert d["category"] == "out_of_memory" and d["reasoner"] == "kb" and d["runbook"] == "oom-restart"
    assert any("MemoryError" in e for e in d["evidence"])
    assert detail["actions"][0]["remedy"] == "restart_process"
    assert starts.read_text().count("start") == 2
    assert detail["signals"][0]["source"] == "logs" and "Traceback" in detail["signals"][0]["annotations"]["log"]
