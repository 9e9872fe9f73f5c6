"""The healing workflow end to end, in process, with real processes, probes and SQLite."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS

from heald.engine import workflow_id
from heald.models import ActionStatus, IncidentState, Signal, SignalStatus
from tests.conftest import free_port, make_config, wait_for

PY = sys.executable


def runbook(tmp_path: Path, risk: str = "low", confidence: float = 0.95, name: str = "svc-broken") -> Path:
    p = tmp_path / "runbooks.yaml"
    p.write_text(textwrap.dedent(f"""
        runbooks:
          - name: {name}
            match:
              labels: ['alertname="SvcBroken"']
            diagnosis: {{category: svc_broken, confidence: {confidence}, explanation: "svc is broken"}}
            remedies:
              - {{remedy: restart_process, risk: {risk}, params: {{service: "${{service}}"}}}}
    """))
    return p


def alert(status: SignalStatus = SignalStatus.firing) -> Signal:
    return Signal(source="test", service="svc", status=status, summary="svc broken",
                  labels={"alertname": "SvcBroken", "service": "svc"})


def sleeper_config(tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    return make_config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
                       runbooks=[str(runbook(tmp_path, **kw))])


def terminal(rt, inc_id: int):  # type: ignore[no-untyped-def]
    """The incident once heald has stopped acting on it by itself: ended, or handed over to a
    human while its target still fails (``needs_attention``, open); else None."""
    inc = rt.store.get_incident(inc_id)
    return inc if inc.state.terminal or inc.state == IncidentState.needs_attention else None


def workflow_done(inc_id: int) -> bool:
    """Has the healing workflow of the incident returned? After that nothing acts for it."""
    status = DBOS.get_workflow_status(workflow_id(inc_id))
    return status is not None and status.status == "SUCCESS"


def recorded(inc_id: int, step: str) -> list[Any]:
    """The outputs DBOS recorded for the incident's workflow's steps named ``step``, in order."""
    return [s["output"] for s in DBOS.list_workflow_steps(workflow_id(inc_id)) if s["function_name"] == step]


def test_process_crash_is_healed_once(tmp_path: Path, start_runtime) -> None:
    port = free_port()
    starts = tmp_path / "starts"
    cfg = make_config(tmp_path, services={"shop": {
        "command": [PY, "-m", "heald.demo.shop", "--port", str(port), "--starts-file", str(starts)],
        "probes": [{"url": f"http://127.0.0.1:{port}/healthz", "interval_seconds": 0.1, "timeout_seconds": 0.5,
                    "failure_threshold": 2}]}})
    rt = start_runtime(cfg)
    wait_for(lambda: starts.exists() and rt.supervisor.get("shop").is_running(), what="shop up")
    os.kill(rt.supervisor.get("shop").identity().pid, signal.SIGKILL)
    inc = wait_for(lambda: rt.store.list_incidents(), what="incident")[0]
    done = wait_for(lambda: terminal(rt, inc.id), what="incident to end")
    assert done.state == IncidentState.resolved, done.closed_reason
    assert done.category == "process_down"
    assert done.recovered_at is not None and done.time_to_recover_s < 10
    actions = rt.store.actions_for(inc.id)
    assert [(a.remedy, a.status) for a in actions] == [("restart_process", ActionStatus.succeeded)]
    assert len(starts.read_text().splitlines()) == 2
    events = [e.event for e in rt.store.audit_entries(incident_id=inc.id)]
    for expected in ("incident.opened", "diagnosis.made", "gate.decided", "action.started", "action.succeeded",
                     "verification.passed", "outcome.recorded"):
        assert expected in events
    assert rt.store.verify_audit().intact


def test_repeated_signals_join_one_incident(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, risk="high"), run_probes=False)
    first = rt.ingest(alert())
    for _ in range(5):
        r = rt.ingest(alert())
        assert r.incident_id == first.incident_id and not r.opened
    assert len(rt.store.list_incidents()) == 1


def test_attempt_budget_then_escalation_with_cooldown(tmp_path: Path, start_runtime) -> None:
    """A restart that never heals: exactly max_attempts actions, cooldown between them, escalated."""
    dead_port = free_port()
    cfg = make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": dead_port, "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1}]}},
        runbooks=[str(runbook(tmp_path))],
        healing={"max_attempts": 3, "retry_delay_seconds": 0.5, "verify_timeout_seconds": 0.4})
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), timeout=60, what="hand-over")
    assert done.state == IncidentState.needs_attention  # the alert still fires: a human must act
    assert "attempt budget spent" in done.closed_reason and "3 of 3" in done.closed_reason
    actions = rt.store.actions_for(inc_id)
    assert [a.attempt for a in actions] == [1, 2, 3]
    for before, after in zip(actions, actions[1:], strict=False):
        assert (after.started_at - before.finished_at).total_seconds() >= 0.5
    outcomes = [o.result.value for o in rt.store.outcomes(incident_id=inc_id)]
    assert outcomes == ["not_healed", "not_healed", "not_healed"]  # the incident's own comes when it ends


def test_approval_then_heal(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    assert rt.store.actions_for(inc_id) == []
    result = rt.approve(inc_id, "alice", "approve", "go ahead")
    assert result["counted"] and result["required"] == 1
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.verifying, what="verifying")
    rt.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt, inc_id), what="resolution")
    assert done.state == IncidentState.resolved
    assert [a.remedy for a in rt.store.actions_for(inc_id)] == ["restart_process"]


def test_two_approvals_by_one_identity_count_once(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, risk="high"), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    assert rt.approve(inc_id, "alice", "approve")["counted"]
    again = rt.approve(inc_id, "alice", "approve")
    assert not again["counted"] and again["approvals"] == 1 and again["required"] == 2
    # each approval wakes the workflow, which counts the votes again: the first look plus one per
    # wake-up; after the third it waits again, having counted alice once
    checks = wait_for(lambda: r if len(r := recorded(inc_id, "approval_status_step")) >= 3 else None,
                      what="the workflow to count the votes after alice's second approval")
    assert checks[-1] == {"verdict": "pending", "count": 1}
    assert rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval
    assert rt.store.actions_for(inc_id) == []
    rt.approve(inc_id, "bob", "approve")
    wait_for(lambda: rt.store.actions_for(inc_id), what="the action after two approvals")


def test_rejection_ends_the_healing(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    rt.approve(inc_id, "carol", "reject", "not now")
    done = wait_for(lambda: terminal(rt, inc_id), what="end")
    assert done.state == IncidentState.needs_attention and "rejected by carol: not now" in done.closed_reason
    assert rt.store.actions_for(inc_id) == []


def test_approval_expires_and_escalates(tmp_path: Path, start_runtime) -> None:
    cfg = sleeper_config(tmp_path, risk="medium")
    cfg.healing.approval_ttl_seconds = 0.5
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), what="expiry")
    assert done.state == IncidentState.needs_attention and "approval expired" in done.closed_reason
    assert rt.store.actions_for(inc_id) == []


def test_unknown_cause_escalates_without_action(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path), run_probes=False)
    inc_id = rt.ingest(Signal(source="test", service="svc", labels={"alertname": "Mystery"})).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), what="escalation")
    assert done.state == IncidentState.needs_attention and "unknown" in done.closed_reason
    assert rt.store.actions_for(inc_id) == []


def test_low_confidence_escalates(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, confidence=0.5), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), what="escalation")
    assert done.state == IncidentState.needs_attention and "confidence 0.50" in done.closed_reason


def test_alert_resolved_before_action_starts_nothing(tmp_path: Path, start_runtime) -> None:
    cfg = sleeper_config(tmp_path, risk="medium")
    cfg.healing.group_wait_seconds = 1.0
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    rt.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt, inc_id), what="resolution")
    assert done.state == IncidentState.resolved and "resolved at its source" in done.closed_reason
    assert rt.store.actions_for(inc_id) == []


@pytest.mark.parametrize("older", ["combined_diagnose_and_plan", "separate_plan_and_decide"])
def test_a_healing_recorded_by_an_older_heald_resumes(tmp_path: Path, start_runtime, older: str) -> None:
    """Older healds recorded the plan inside the diagnose step and then a ``decide_step``
    (``combined_diagnose_and_plan``), or a ``plan_step`` with the plan alone and then a
    ``decide_step`` (``separate_plan_and_decide``); today's ``plan_step`` also decides. Rewrite
    the recorded steps the older way while the healing waits for approval, start a new heald on
    the same files, and the healing resumes from the record to the end."""
    import base64
    import pickle
    import sqlite3

    cfg = sleeper_config(tmp_path, risk="medium")
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: recorded(inc_id, "approval_status_step"), what="the approval wait")
    rt.stop(stop_services=True)

    db = sqlite3.connect(tmp_path / "state" / "dbos.sqlite")
    db.row_factory = sqlite3.Row
    wf = workflow_id(inc_id)
    rows = {r["function_name"]: dict(r) for r in db.execute(
        "SELECT * FROM operation_outputs WHERE workflow_uuid = ? ORDER BY function_id", (wf,))}

    def load(out: str) -> Any:  # DBOS's py_pickle
        return pickle.loads(base64.b64decode(out))

    def dump(value: Any) -> str:
        return base64.b64encode(pickle.dumps(value)).decode()

    diag, plan = rows["diagnose_step"], rows["plan_step"]
    settled = load(plan["output"])
    assert settled["decided"]["kind"] == "approval" and settled["lease"] is None  # one step planned and decided
    decide = {**plan, "function_name": "decide_step", "output": dump(settled["decided"])}
    with db:
        if older == "combined_diagnose_and_plan":  # diagnose (with the plan), decide: as many steps as today
            new = load(diag["output"])
            old = {"category": new["category"], "confidence": new["confidence"], "diagnosis": new["diagnosis"],
                   "candidates": settled["candidates"], "verify": new["verify"]}
            db.execute("UPDATE operation_outputs SET output = ? WHERE workflow_uuid = ? AND function_id = ?",
                       (dump(old), wf, diag["function_id"]))
            db.execute("DELETE FROM operation_outputs WHERE workflow_uuid = ? AND function_id = ?",
                       (wf, plan["function_id"]))
        else:  # diagnose, plan (alone), decide: one step more than today
            later = [r[0] for r in db.execute("SELECT function_id FROM operation_outputs WHERE workflow_uuid = ? AND "
                                              "function_id > ? ORDER BY function_id DESC", (wf, plan["function_id"]))]
            for fid in later:
                db.execute("UPDATE operation_outputs SET function_id = ? WHERE workflow_uuid = ? AND function_id = ?",
                           (fid + 1, wf, fid))
            db.execute("UPDATE operation_outputs SET output = ? WHERE workflow_uuid = ? AND function_id = ?",
                       (dump({"candidates": settled["candidates"]}), wf, plan["function_id"]))
            decide["function_id"] = plan["function_id"] + 1
        db.execute(f"INSERT INTO operation_outputs ({', '.join(decide)}) VALUES ({', '.join('?' * len(decide))})",
                   list(decide.values()))
    db.close()

    rt2 = start_runtime(cfg, run_probes=False)
    rt2.approve(inc_id, "alice", "approve")
    wait_for(lambda: rt2.store.get_incident(inc_id).state == IncidentState.verifying, what="verifying")
    rt2.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt2, inc_id), what="the resumed healing to end")
    assert done.state == IncidentState.resolved, done.closed_reason
    assert [a.remedy for a in rt2.store.actions_for(inc_id)] == ["restart_process"]
    assert len(recorded(inc_id, "decide_step")) == 1
    if older == "combined_diagnose_and_plan":
        assert recorded(inc_id, "plan_step") == [] and "candidates" in recorded(inc_id, "diagnose_step")[0]


def test_a_restart_that_does_not_take_fails_at_once_with_the_service_output(tmp_path: Path, start_runtime) -> None:
    """Issue 12 item 5: the service exits right after its restart. The action fails with the
    service's last output lines, and the healing does not sit out the verification timeout."""
    marker = tmp_path / "broken"
    code = ("import os, sys, time\n"
            f"if os.path.exists({str(marker)!r}):\n"
            "    sys.exit('FATAL: config error in /etc/svc.conf line 3')\n"
            "time.sleep(600)\n")
    cfg = make_config(tmp_path, services={"svc": {"command": [PY, "-c", code], "start_period_seconds": 5}},
                      runbooks=[str(runbook(tmp_path))], healing={"verify_timeout_seconds": 60.0})
    rt = start_runtime(cfg, run_probes=False)
    marker.touch()
    t0 = time.monotonic()
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), timeout=40, what="the incident to end")
    assert time.monotonic() - t0 < 40  # far below the 60 s verification timeout
    assert done.state != IncidentState.resolved
    actions = rt.store.actions_for(inc_id)
    assert actions and actions[0].status == ActionStatus.failed
    assert "FATAL: config error in /etc/svc.conf line 3" in actions[0].output
    assert "exited with code 1 within its start period" in actions[0].output
    events = [e.event for e in rt.store.audit_entries(incident_id=inc_id)]
    assert "action.failed" in events and "action.succeeded" not in events


def test_a_message_heald_sends_wakes_the_waiting_healing_at_once(tmp_path: Path, start_runtime,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite, DBOS looks for messages to waiting healings every
    ``SQLITE_NOTIFICATION_POLL_SECONDS`` (a query per waiting healing each time: at 0.1 s, a
    hundred healings waiting for humans took half of heald's CPU). A message heald sends itself
    (an approval here) wakes its waiter at once: with DBOS's checks a minute apart, the
    approved healing still goes on within seconds."""
    import importlib

    from heald.engine.runtime import _system_database

    runtime_module = importlib.import_module("heald.engine.runtime")  # heald.engine.runtime is also a function

    monkeypatch.setattr(runtime_module, "SQLITE_NOTIFICATION_POLL_SECONDS", 60.0)
    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    assert _system_database()._notification_listener_polling_interval_sec == 60.0
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    time.sleep(0.5)  # the healing is in its wait (DBOS.recv) by now
    rt.approve(inc_id, "alice", "approve", "go ahead")
    wait_for(lambda: rt.store.actions_for(inc_id), timeout=15, what="the action, woken by the approval")
