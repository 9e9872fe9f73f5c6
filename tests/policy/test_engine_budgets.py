"""Budgets at work in the real healing workflow (DBOS on SQLite files, real processes): the
attempt budget, a cooldown that holds across a restart of heald, the circuit breaker, one
healing per target at a time."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from heald.models import IncidentState, Signal, SignalStatus
from tests.conftest import free_port, make_config, wait_for
from tests.engine.test_workflow import alert, runbook, terminal

PY = sys.executable


def never_heals(tmp_path: Path, **data: object):  # type: ignore[no-untyped-def]
    """A managed service whose verification always fails: its tcp probe checks a dead port."""
    healing = {"max_attempts": 3, "retry_delay_seconds": 0.2, "verify_timeout_seconds": 0.4,
               **data.pop("healing", {})}  # type: ignore[dict-item]
    return make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": free_port(), "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1}]}},
        runbooks=[str(runbook(tmp_path))], healing=healing, **data)


def test_the_fourth_attempt_never_happens(tmp_path: Path, start_runtime) -> None:
    """A remedy that never heals: three attempts, then the incident is handed over to a human
    (the alert still fires); the alert firing again joins it, and no fourth action comes."""
    from dbos import DBOS

    from heald.engine import workflow_id

    rt = start_runtime(never_heals(tmp_path, healing={"attention_check_seconds": 0.05}), run_probes=False)
    first = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, first), timeout=30, what="hand-over")
    assert done.state == IncidentState.needs_attention and "3 of 3" in done.closed_reason
    assert [a.attempt for a in rt.store.actions_for(first)] == [1, 2, 3]
    again = rt.ingest(alert())
    assert not again.opened and again.incident_id == first  # one root cause, one (open) incident

    def checks() -> int:
        return sum(1 for s in DBOS.list_workflow_steps(workflow_id(first)) if s["function_name"] == "attention_step")

    seen = checks()
    # the healing re-checked the incident ten times since; a wrongly scheduled attempt would have acted by then
    wait_for(lambda: checks() >= seen + 10, what="ten more checks of the incident")
    assert len(rt.store.actions_for(first)) == 3
    assert rt.store.get_incident(first).state == IncidentState.needs_attention


def test_a_cooldown_holds_across_a_restart(tmp_path: Path, start_runtime) -> None:
    """heal once, stop heald, start a new heald on the same SQLite file: the same remedy on the
    same target is still in cooldown."""
    cfg = make_config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
                      runbooks=[str(runbook(tmp_path))], policy={"budgets": {"cooldown_seconds": 3600}},
                      healing={"blocked_backoff_initial_seconds": 0.1, "blocked_wait_max_seconds": 0.5})
    rt = start_runtime(cfg, run_probes=False)
    first = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(first).state == IncidentState.verifying, what="verifying")
    rt.ingest(alert(SignalStatus.resolved))
    assert wait_for(lambda: terminal(rt, first), what="resolution").state == IncidentState.resolved
    assert [a.target for a in rt.store.actions_for(first)] == ["service:svc"]
    rt.stop()

    rt2 = start_runtime(cfg, run_probes=False)  # a new heald: new DBOS, new store, same files
    assert rt2 is not rt and rt2.store is not rt.store
    second = rt2.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt2, second), what="the gate to stop the second incident")
    assert done.state == IncidentState.needs_attention  # waited the block out as long as allowed, then a human
    assert f"by incident {first}; the cooldown is 1h" in done.closed_reason
    assert rt2.store.actions_for(second) == []


def test_breaker_opens_after_failed_verifications_and_needs_a_human(tmp_path: Path, start_runtime) -> None:
    cfg = never_heals(tmp_path, healing={"max_attempts": 2},
                      policy={"budgets": {"breaker_failures": 2, "cooldown_seconds": 0}})
    rt = start_runtime(cfg, run_probes=False)
    first = rt.ingest(alert()).incident_id
    assert wait_for(lambda: terminal(rt, first), timeout=30, what="hand-over").state == IncidentState.needs_attention
    rt.ingest(alert(SignalStatus.resolved))  # it came back by itself; the next failure is a new incident
    assert wait_for(lambda: rt.store.get_incident(first).state == IncidentState.resolved, what="first to end")
    from heald.budgets import breakers, reset_breaker

    [breaker] = breakers(rt.store)
    assert breaker["target"] == "service:svc" and breaker["state"] == "open" and breaker["failures"] == 2
    second = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(second).state == IncidentState.awaiting_approval, what="approval wait")
    decision = rt.store.decisions_for(second)[-1]
    assert decision["kind"] == "approval" and "circuit breaker open for service:svc" in decision["reason"]
    assert rt.store.actions_for(second) == []
    reset_breaker(rt.store, "service:svc", "user:alice")
    assert breakers(rt.store)[0]["state"] == "closed"


def test_one_healing_per_target_at_a_time(tmp_path: Path, start_runtime) -> None:
    """Two incidents whose remedies act on one service: the second acts only after the first
    has verified and released the target."""
    rb = tmp_path / "two.yaml"
    rb.write_text(textwrap.dedent("""
        runbooks:
          - name: a
            match: {labels: ['alertname="A"']}
            diagnosis: {category: a_broken, confidence: 0.95}
            remedies: [{remedy: restart_process, risk: low, params: {service: svc}}]
          - name: b
            match: {labels: ['alertname="B"']}
            diagnosis: {category: b_broken, confidence: 0.95}
            remedies: [{remedy: restart_process, risk: low, params: {service: svc}}]
    """))
    cfg = never_heals(tmp_path, healing={"max_attempts": 1, "verify_timeout_seconds": 1.5},
                      policy={"budgets": {"cooldown_seconds": 0, "lease_poll_seconds": 0.05}})
    cfg.runbooks = [rb]
    rt = start_runtime(cfg, run_probes=False)
    # two targets (signals about one target would join one incident) whose remedies act on svc
    ids = [rt.ingest(Signal(source="test", service=f"view-{n}", labels={"alertname": n})).incident_id
           for n in ("A", "B")]
    assert ids[0] != ids[1]
    for i in ids:
        assert wait_for(lambda i=i: terminal(rt, i), timeout=30,
                        what="both to be handed over").state == IncidentState.needs_attention
    spans = []
    for i in ids:
        [action] = rt.store.actions_for(i)
        [verification] = rt.store.verifications_for(i)
        spans.append((action.started_at, verification.finished_at))
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1, f"the second healing acted at {b0} while the first was still verifying until {a1}"
    released = [e for e in rt.store.audit_entries() if e.event == "lease.released"]
    assert len(released) == 2
