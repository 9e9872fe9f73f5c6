"""A target that still fails is never abandoned (issue 12, item 3), in the real workflow: a
remedy blocked by the cross-incident cooldown is waited out and applied once it lifts; a block
that never lifts hands the incident over to a human, who is reminded at a real webhook until
they act; humans retry, acknowledge and resolve."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

from dbos import DBOS

from heald.engine import attention, workflow_id
from heald.models import ActionStatus, IncidentState, OutcomeResult, Signal, SignalStatus
from tests.conftest import free_port, make_config, wait_for
from tests.engine.test_workflow import alert, runbook, terminal
from tests.notify.conftest import Receiver

PY = sys.executable
NEEDS = IncidentState.needs_attention


def state_is(rt, inc_id: int, state: IncidentState):  # type: ignore[no-untyped-def]
    inc = rt.store.get_incident(inc_id)
    return inc if inc.state == state else None


def events(rt, inc_id: int, event: str) -> list[Any]:  # type: ignore[no-untyped-def]
    return [e for e in rt.store.audit_entries(incident_id=inc_id) if e.event == event]


def steps_named(inc_id: int, name: str) -> int:
    return sum(1 for s in DBOS.list_workflow_steps(workflow_id(inc_id)) if s["function_name"] == name)


def test_a_second_crash_inside_the_cooldown_is_healed_once_the_cooldown_ends(tmp_path: Path, start_runtime) -> None:
    """The observed failure: a second crash 1 min 46 s after the first met the 300 s cooldown
    and was escalated with nothing ever retried. Now the healing waits the cooldown out (with
    backoff, re-checking its signals) and restarts the service once it has lifted."""
    port = free_port()
    starts = tmp_path / "starts"
    cooldown = 12.0
    cfg = make_config(tmp_path, services={"shop": {
        "command": [PY, "-m", "heald.demo.shop", "--port", str(port), "--starts-file", str(starts)],
        "probes": [{"url": f"http://127.0.0.1:{port}/healthz", "interval_seconds": 0.1, "timeout_seconds": 0.5,
                    "failure_threshold": 2}]}},
        policy={"budgets": {"remedy_cooldown_seconds": cooldown}},
        healing={"blocked_backoff_initial_seconds": 0.5, "blocked_backoff_max_seconds": 2.0,
                 "blocked_wait_max_seconds": 60})
    rt = start_runtime(cfg)
    shop = rt.supervisor.get("shop")
    wait_for(lambda: starts.exists() and shop.is_running(), what="shop up")
    os.kill(shop.identity().pid, signal.SIGKILL)
    first = wait_for(lambda: rt.store.list_incidents(), what="first incident")[0].id
    assert wait_for(lambda: terminal(rt, first), what="first heal").state == IncidentState.resolved
    os.kill(shop.identity().pid, signal.SIGKILL)  # the second crash, well inside the cooldown
    second = wait_for(lambda: [i for i in rt.store.list_incidents() if i.id != first], what="second incident")[0].id
    done = wait_for(lambda: terminal(rt, second), timeout=60, what="second heal")
    assert done.state == IncidentState.resolved, done.closed_reason
    [restart_1] = rt.store.actions_for(first)
    [restart_2] = rt.store.actions_for(second)
    assert restart_2.status == ActionStatus.succeeded
    assert (restart_2.started_at - restart_1.started_at).total_seconds() >= cooldown
    blocked = events(rt, second, "healing.blocked")
    assert blocked and "cooldown: restart_process was applied to service:shop" in blocked[0].reason
    assert [d["kind"] for d in rt.store.decisions_for(second)][-1] == "auto"
    assert len(starts.read_text().splitlines()) == 3
    assert rt.store.verify_audit().intact


def test_a_block_that_never_lifts_is_handed_over_and_reminded_until_acknowledged(
        tmp_path: Path, start_runtime) -> None:
    """The cooldown outlasts blocked_wait_max_seconds: the incident needs attention (open), the
    webhook hears 'escalated' and then reminders, each audited, until a human acknowledges."""
    hook = Receiver()
    try:
        cfg = make_config(
            tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
            runbooks=[str(runbook(tmp_path))],
            policy={"budgets": {"remedy_cooldown_seconds": 3600}},
            healing={"blocked_backoff_initial_seconds": 0.1, "blocked_backoff_max_seconds": 0.2,
                     "blocked_wait_max_seconds": 0.5, "attention_check_seconds": 0.1},
            notifications={"reminder_interval_seconds": 0.3,
                           "channels": [{"type": "webhook", "name": "oncall", "url": hook.url,
                                         "retry": {"attempts": 1, "timeout_seconds": 2}}]})
        rt = start_runtime(cfg, run_probes=False)
        first = rt.ingest(alert()).incident_id
        wait_for(lambda: rt.store.get_incident(first).state == IncidentState.verifying, what="first verifying")
        rt.ingest(alert(SignalStatus.resolved))
        assert wait_for(lambda: terminal(rt, first), what="first heal").state == IncidentState.resolved

        second = rt.ingest(alert()).incident_id  # fails again: the restart is in cooldown for an hour
        inc = wait_for(lambda: state_is(rt, second, NEEDS), timeout=30, what="hand-over")
        assert "cooldown" in inc.closed_reason and "blocked_wait_max_seconds" in inc.closed_reason
        assert rt.store.actions_for(second) == []
        assert rt.store.count_incidents_by_state().get("needs_attention") == 1  # open, not closed

        def heard(event: str) -> list[Any]:
            return [r for r in hook.requests if r.headers.get("x-heald-event") == event
                    and r.json()["incident"]["id"] == second]

        wait_for(lambda: len(heard("reminder")) >= 2, timeout=30, what="two reminders at the webhook")
        assert heard("escalated"), "the hand-over itself is announced"
        reminder = heard("reminder")[0].json()
        assert reminder["state"] == "needs_attention" and reminder["delivery_id"].endswith("-1")
        assert len({r.json()["delivery_id"] for r in heard("reminder")}) == len(heard("reminder"))
        assert len(events(rt, second, "incident.reminder")) >= 2

        attention.acknowledge(rt.store, second, "user:alice", "looking at it")
        acked = len(events(rt, second, "incident.reminder"))
        checks = steps_named(second, "attention_step")
        # the workflow checks every 0.1 s; after ten more checks (three reminder intervals) none came
        wait_for(lambda: steps_named(second, "attention_step") >= checks + 10, what="ten more checks")
        assert len(events(rt, second, "incident.reminder")) <= acked + 1  # one may have been under way
        [ack] = events(rt, second, "incident.acknowledged")
        assert ack.actor == "user:alice" and "looking at it" in ack.reason
        assert rt.store.get_incident(second).state == NEEDS

        rt.ingest(alert(SignalStatus.resolved))  # the service comes back by itself: the incident ends, honestly
        done = wait_for(lambda: rt.store.get_incident(second).state.terminal and rt.store.get_incident(second),
                        what="end when the signal resolved")
        assert done.state == IncidentState.resolved and "heald did not heal it" in done.closed_reason
        assert [o.result for o in rt.store.outcomes(incident_id=second)] == [OutcomeResult.escalated]
    finally:
        hook.close()


def test_a_human_retry_gives_a_new_attempt_budget_and_resolve_closes_it(tmp_path: Path, start_runtime) -> None:
    """A remedy that never heals: the attempt budget is spent with the alert still firing, so
    the incident needs attention; a human's retry makes heald try again (a new budget of
    attempts, new idempotency keys), and a human's resolve closes it, not as a heal."""
    cfg = make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": free_port(), "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1}]}},
        runbooks=[str(runbook(tmp_path))],
        healing={"max_attempts": 2, "retry_delay_seconds": 0.1, "verify_timeout_seconds": 0.4,
                 "attention_check_seconds": 0.1},
        policy={"budgets": {"remedy_cooldown_seconds": 0, "breaker_failures": 100}})
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    inc = wait_for(lambda: state_is(rt, inc_id, NEEDS), timeout=30, what="hand-over")
    assert "attempt budget spent: 2 of 2" in inc.closed_reason
    assert [a.attempt for a in rt.store.actions_for(inc_id)] == [1, 2]

    result = attention.retry(rt.store, inc_id, "user:bob", "I freed the port", rt.send)
    assert result["state"] == "diagnosing"
    wait_for(lambda: len(rt.store.actions_for(inc_id)) == 4 and state_is(rt, inc_id, NEEDS), timeout=30,
             what="a second round of two attempts, then a hand-over again")
    assert [a.attempt for a in rt.store.actions_for(inc_id)] == [1, 2, 3, 4]
    retry = [e for e in events(rt, inc_id, "incident.transition") if e.details.get("human_action") == "retry"]
    assert len(retry) == 1 and retry[0].actor == "user:bob" and "I freed the port" in retry[0].reason

    attention.resolve(rt.store, inc_id, "user:carol", "moved the service to another host", rt.send)
    done = rt.store.get_incident(inc_id)
    assert done.state == IncidentState.resolved and done.closed_reason.startswith("resolved by user:carol")
    final = [o for o in rt.store.outcomes(incident_id=inc_id) if o.attempt == 0]
    assert [o.result for o in final] == [OutcomeResult.resolved_by_human]
    wait_for(lambda: (s := DBOS.get_workflow_status(workflow_id(inc_id))) is not None and s.status == "SUCCESS",
             what="the workflow to end")
    assert len(rt.store.actions_for(inc_id)) == 4


def test_a_target_leased_by_another_healing_too_long_is_handed_over_and_retried(tmp_path: Path,
                                                                              start_runtime) -> None:
    """Two incidents whose remedies act on one service: the second waits for the first's lease
    no longer than lease_wait_seconds, then needs attention; a human's retry heals it further."""
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
    cfg = make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": free_port(), "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1}]}},
        runbooks=[str(rb)],
        healing={"max_attempts": 1, "verify_timeout_seconds": 2.0, "attention_check_seconds": 0.1},
        policy={"budgets": {"remedy_cooldown_seconds": 0, "lease_wait_seconds": 0.3, "lease_poll_seconds": 0.05,
                            "breaker_failures": 100}})
    rt = start_runtime(cfg, run_probes=False)
    a = rt.ingest(Signal(source="test", service="svc", labels={"alertname": "A", "service": "svc"})).incident_id
    wait_for(lambda: rt.store.actions_for(a), what="A to act")
    # B is about another service (about svc it would join A: one target, one incident) whose runbook restarts svc
    b = rt.ingest(Signal(source="test", service="gateway", labels={"alertname": "B", "service": "gateway"})).incident_id
    handed = wait_for(lambda: state_is(rt, b, NEEDS), timeout=30, what="B handed over")
    assert f"service:svc is being healed by incident {a}" in handed.closed_reason
    assert rt.store.actions_for(b) == []
    wait_for(lambda: state_is(rt, a, NEEDS), timeout=30, what="A handed over (its restart never heals)")
    attention.retry(rt.store, b, "user:dana", "A is done", rt.send)
    wait_for(lambda: rt.store.actions_for(b) and state_is(rt, b, NEEDS), timeout=30, what="B to act, then hand over")
    [action] = rt.store.actions_for(b)
    assert action.attempt == 2 and action.target == "service:svc"
