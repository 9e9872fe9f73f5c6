"""Stopping heald while a healing waits for an approval: the process exits at once, and the
waiting healing resumes in the next heald."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from heald.models import IncidentState, SignalStatus
from tests.conftest import wait_for
from tests.engine.test_workflow import alert, sleeper_config, terminal

SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from heald.engine import Runtime
    from tests.engine.test_workflow import alert, sleeper_config
    rt = Runtime(sleeper_config(Path(sys.argv[1]), risk="medium"), run_probes=False)
    rt.start()
    inc = rt.ingest(alert()).incident_id
    deadline = time.monotonic() + 60
    while rt.store.get_incident(inc).state.value != "awaiting_approval":
        assert time.monotonic() < deadline, "never awaited approval"
        time.sleep(0.05)
    rt.stop(stop_services=True)
    print("stopped", flush=True)
""")


def test_stop_does_not_wait_for_a_pending_approval(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=Path(__file__).parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # heald's structured log lines come first
        if line.strip() == "stopped":
            break
    else:
        raise AssertionError(f"the script ended without stopping heald (exit {proc.wait()})")
    stopped = time.monotonic()
    proc.communicate(timeout=120)  # keep reading: the dying workflow threads still log
    exit_after = time.monotonic() - stopped
    # DBOS.recv in the approval wait sleeps up to 300 s at a time; the process must not wait for it
    assert exit_after < 15, f"the process took {exit_after:.1f} s to exit after stop()"

    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    [inc] = rt.store.list_incidents()
    wait_for(lambda: rt.store.get_incident(inc.id).state == IncidentState.awaiting_approval, what="the wait resumed")
    assert rt.store.actions_for(inc.id) == []
    rt.approve(inc.id, "alice", "approve")
    wait_for(lambda: rt.store.get_incident(inc.id).state == IncidentState.verifying, what="acting on the approval")
    rt.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt, inc.id), timeout=60, what="the approved healing to end")
    assert done.state == IncidentState.resolved, done.closed_reason
    assert [a.remedy for a in rt.store.actions_for(inc.id)] == ["restart_process"]
