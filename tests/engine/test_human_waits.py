"""A healing that waits for a human — an approval, a hand-over (``needs_attention``) — or for a
cooldown to lift gives up its slot on DBOS's healing queue while it waits, so that with
``healing.max_concurrent: 1`` a new incident is still healed; the waiting healing takes a slot
back before it acts again (waiting for a free one: at most ``max_concurrent`` act at once), and a
heald restarted during the wait resumes the wait without holding the slot. Real runtimes, real
DBOS on SQLite files and on PostgreSQL, real processes restarted."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dbos import DBOS

from heald.config import HealdConfig
from heald.engine import Runtime, attention, workflow_id
from heald.engine.runtime import HEALING_QUEUE
from heald.models import ActionStatus, Incident, IncidentState, Signal, SignalStatus
from tests.conftest import make_config, wait_for

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(600)"]


def runbooks(tmp_path: Path) -> Path:
    """``Risky`` alerts: a restart that needs an approval; ``Broken`` alerts: one heald applies."""
    p = tmp_path / "runbooks.yaml"
    p.write_text(textwrap.dedent("""
        runbooks:
          - name: risky
            match: {labels: ['alertname="Risky"']}
            diagnosis: {category: svc_broken, confidence: 0.95, explanation: "risky to restart"}
            remedies:
              - {remedy: restart_process, risk: medium, params: {service: "${service}"}}
          - name: broken
            match: {labels: ['alertname="Broken"']}
            diagnosis: {category: svc_broken, confidence: 0.95, explanation: "restart it"}
            remedies:
              - {remedy: restart_process, risk: low, params: {service: "${service}"}}
    """))
    return p


def config(tmp_path: Path, db_url: str | None = None, **healing: object) -> HealdConfig:
    """Two sleeping services ``a`` and ``b``, one healing acting at a time."""
    store = {"database_url": db_url} if db_url else {}
    return make_config(tmp_path, services={"a": {"command": SLEEPER}, "b": {"command": SLEEPER}},
                       runbooks=[str(runbooks(tmp_path))],
                       healing={"max_concurrent": 1, "verify_timeout_seconds": 60, **healing}, **store)


def alert(service: str, name: str, status: SignalStatus = SignalStatus.firing) -> Signal:
    return Signal(source="test", service=service, status=status, summary=f"{service} {name}",
                  labels={"alertname": name, "service": service})


def state(rt: Runtime, inc_id: int) -> IncidentState:
    return rt.store.get_incident(inc_id).state


def heal(rt: Runtime, service: str, name: str = "Broken") -> Incident:
    """Open an incident about ``service`` and see it healed: its restart applied, then (as it
    verifies) its alert resolved. Fails when heald never gets to act on it."""
    inc_id = rt.ingest(alert(service, name)).incident_id
    assert inc_id is not None
    return finish(rt, inc_id, service, name)


def finish(rt: Runtime, inc_id: int, service: str, name: str) -> Incident:
    """Wait for incident ``inc_id`` to verify its restart, then resolve its alert (``service``,
    ``name``); returns the ended incident."""
    wait_for(lambda: state(rt, inc_id) == IncidentState.verifying, timeout=30,
             what=f"incident {inc_id} ({service}) to act and verify")
    rt.ingest(alert(service, name, SignalStatus.resolved))
    done = wait_for(lambda: (i := rt.store.get_incident(inc_id)).state.terminal and i, what=f"incident {inc_id} to end")
    assert done.state == IncidentState.resolved, done.closed_reason
    return done


def workflow_ended(inc_id: int) -> bool:
    status = DBOS.get_workflow_status(workflow_id(inc_id))
    return status is not None and status.status == "SUCCESS"


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_an_incident_awaiting_approval_does_not_keep_a_new_one_from_being_healed(
        tmp_path: Path, start_runtime: Callable[..., Runtime], db: str, request: pytest.FixtureRequest) -> None:
    rt = start_runtime(config(tmp_path, request.getfixturevalue("pg_url") if db == "postgresql" else None),
                       run_probes=False)
    risky = rt.ingest(alert("a", "Risky")).incident_id
    assert risky is not None
    wait_for(lambda: state(rt, risky) == IncidentState.awaiting_approval, what="the approval wait")

    healed = heal(rt, "b")  # the one slot is free while a human decides about the first incident
    assert [a.status for a in rt.store.actions_for(healed.id)] == [ActionStatus.succeeded]
    assert state(rt, risky) == IncidentState.awaiting_approval and rt.store.actions_for(risky) == []

    rt.approve(risky, "alice", "approve", "go")  # the waiting healing resumes and acts
    finish(rt, risky, "a", "Risky")
    [restart] = rt.store.actions_for(risky)
    assert restart.remedy == "restart_process" and restart.status == ActionStatus.succeeded
    wait_for(lambda: workflow_ended(risky) and workflow_ended(healed.id), what="both workflows to return")
    events = [e.event for e in rt.store.audit_entries(incident_id=risky)]
    assert events.count("action.started") == 1
    assert rt.store.verify_audit().intact
    assert rt.reap_stranded_incidents() == {"started": [], "resumed": [], "failed": []}


def test_an_incident_handed_over_to_a_human_does_not_keep_a_new_one_from_being_healed(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    # its one attempt does not heal (the alert still fires after 1 s): heald hands it over
    rt = start_runtime(config(tmp_path, max_attempts=1, verify_timeout_seconds=1.0,
                              attention_check_seconds=30), run_probes=False)
    stuck = rt.ingest(alert("a", "Broken")).incident_id
    assert stuck is not None
    handed = wait_for(lambda: (i := rt.store.get_incident(stuck)).state == IncidentState.needs_attention and i,
                      timeout=30, what="the hand-over")
    assert "attempt budget spent" in (handed.closed_reason or "")

    rt.config.healing.verify_timeout_seconds = 60  # (read at each verification)
    healed = heal(rt, "b")  # while the first waits for a human
    assert state(rt, stuck) == IncidentState.needs_attention

    attention.retry(rt.store, stuck, "user:alice", "try again", rt.send)  # the waiting healing resumes
    wait_for(lambda: len(rt.store.actions_for(stuck)) == 2, what="the retried restart")
    rt.ingest(alert("a", "Broken", SignalStatus.resolved))
    done = wait_for(lambda: (i := rt.store.get_incident(stuck)).state.terminal and i, what="the retried healing to end")
    assert done.state == IncidentState.resolved, done.closed_reason
    assert [a.attempt for a in rt.store.actions_for(stuck)] == [1, 2]
    wait_for(lambda: workflow_ended(stuck) and workflow_ended(healed.id), what="both workflows to return")
    assert rt.store.verify_audit().intact


def test_a_healing_waiting_out_a_cooldown_does_not_keep_a_new_one_from_being_healed(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    cfg = config(tmp_path, blocked_backoff_initial_seconds=0.5, blocked_backoff_max_seconds=1.0,
                 blocked_wait_max_seconds=120)
    cfg.policy.budgets.remedy_cooldown_seconds = 600
    rt = start_runtime(cfg, run_probes=False)
    heal(rt, "a")
    again = rt.ingest(alert("a", "Broken")).incident_id  # a's second failure, inside the cooldown
    assert again is not None
    wait_for(lambda: [e for e in rt.store.audit_entries(incident_id=again) if e.event == "healing.blocked"],
             what="the second healing to wait the cooldown out")

    healed = heal(rt, "b")  # while it waits
    assert rt.store.actions_for(again) == [] and state(rt, again) == IncidentState.deciding

    cfg.policy.budgets.remedy_cooldown_seconds = 0  # the block lifts (read at each check): it acts
    finish(rt, again, "a", "Broken")
    [restart] = rt.store.actions_for(again)
    assert restart.started_at > rt.store.actions_for(healed.id)[0].started_at
    assert rt.store.verify_audit().intact


def test_a_resumed_healing_waits_for_a_free_slot_before_acting(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    from heald.engine.runtime import _rejoining  # the healings of this process taking their slot back

    rt = start_runtime(config(tmp_path), run_probes=False)
    risky = rt.ingest(alert("a", "Risky")).incident_id
    assert risky is not None
    wait_for(lambda: state(rt, risky) == IncidentState.awaiting_approval, what="the approval wait")
    busy = rt.ingest(alert("b", "Broken")).incident_id
    assert busy is not None
    wait_for(lambda: state(rt, busy) == IncidentState.verifying, what="the second incident to act")

    rt.approve(risky, "alice", "approve", "go")  # approved while the one slot is taken
    wait_for(lambda: _rejoining, what="the approved healing to wait for a slot")
    assert rt.store.actions_for(risky) == []  # it does not act beside the healing in the slot

    rt.ingest(alert("b", "Broken", SignalStatus.resolved))  # the acting healing ends: its slot frees
    busy_done = wait_for(lambda: (i := rt.store.get_incident(busy)).state.terminal and i, what="the second to end")
    finish(rt, risky, "a", "Risky")
    [restart] = rt.store.actions_for(risky)
    assert busy_done.closed_at is not None and restart.started_at >= busy_done.closed_at


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_heald_restarted_during_the_wait_resumes_it_without_holding_the_slot(
        tmp_path: Path, start_runtime: Callable[..., Runtime], db: str, request: pytest.FixtureRequest) -> None:
    cfg = config(tmp_path, request.getfixturevalue("pg_url") if db == "postgresql" else None)
    rt = start_runtime(cfg, run_probes=False)
    risky = rt.ingest(alert("a", "Risky")).incident_id
    assert risky is not None
    wait_for(lambda: state(rt, risky) == IncidentState.awaiting_approval, what="the approval wait")
    rt.stop()

    again = start_runtime(cfg, run_probes=False)  # recovers the pending healing: it waits again
    wait_for(lambda: DBOS.get_workflow_status(workflow_id(risky)).status == "PENDING",  # type: ignore[union-attr]
             what="the recovered healing to run")
    heal(again, "b")
    assert state(again, risky) == IncidentState.awaiting_approval and again.store.actions_for(risky) == []
    again.approve(risky, "bob", "approve", "go")
    finish(again, risky, "a", "Risky")
    assert len(again.store.actions_for(risky)) == 1
    assert again.store.verify_audit().intact


def test_dbos_counts_the_healing_queue_as_heald_expects() -> None:
    """heald gives a waiting healing's slot back through DBOS 3.4's internals (see
    :func:`heald.engine.runtime.leave_healing_queue`). If this fails after a DBOS upgrade, a
    healing waiting for a human holds its slot again — a few such waits stop every new
    incident from being healed: adapt ``leave_healing_queue`` and ``rejoin_healing_queue``."""
    import inspect

    from dbos import _queue
    from dbos._core import ActiveWorkflowById

    from heald.engine.runtime import _SLOT, _WAITING, _swap

    source = inspect.getsource(_queue.queue_worker_thread)
    assert "_active_workflows_set.count_for_queue(queue.name)" in source, \
        "DBOS no longer counts a queue's worker concurrency from its registry of running workflows"
    registry = ActiveWorkflowById()
    entry = registry.add("incident-1", HEALING_QUEUE, None)
    assert registry.count_for_queue(HEALING_QUEUE) == 1
    assert registry._m["incident-1"] == [_SLOT]
    assert _swap(registry, "incident-1", _SLOT, _WAITING)
    assert registry.count_for_queue(HEALING_QUEUE) == 0  # what a waiting healing counts
    assert _swap(registry, "incident-1", _WAITING, _SLOT)
    entry.release()  # DBOS's own release at the workflow's end finds the slot it gave
    assert registry.activeList() == [] and registry.count_for_queue(HEALING_QUEUE) == 0


def test_the_sweep_resumes_a_cancelled_healing_on_the_healing_queue(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    """A healing the reaper resumes counts against ``healing.max_concurrent`` like any other
    (DBOS's resume would otherwise put it on its internal queue, which has no limit)."""
    rt = start_runtime(config(tmp_path, group_wait_seconds=3.0), run_probes=False)
    inc_id = rt.ingest(alert("a", "Risky")).incident_id
    assert inc_id is not None and rt.dispatcher.wait_idle()  # its healing is enqueued (delayed)
    DBOS.cancel_workflow(workflow_id(inc_id))
    assert rt.reap_stranded_incidents()["resumed"] == [inc_id]
    status = DBOS.get_workflow_status(workflow_id(inc_id))
    assert status is not None and status.queue_name == HEALING_QUEUE
    wait_for(lambda: state(rt, inc_id) == IncidentState.awaiting_approval, what="the resumed healing to wait")


def test_beyond_max_waiting_a_waiting_healing_keeps_its_slot(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    """Each healing waiting off the queue still holds a thread: at most
    ``healing.max_waiting`` give their slot up; beyond it a wait keeps its slot, so the next
    incident waits in the queue (here the bound is 0: the old behaviour), and acts once the
    waiting one is answered."""
    rt = start_runtime(config(tmp_path, max_waiting=0), run_probes=False)
    waiting = rt.ingest(alert("a", "Risky")).incident_id
    assert waiting is not None
    wait_for(lambda: state(rt, waiting) == IncidentState.awaiting_approval, what="the approval wait")
    queued = rt.ingest(alert("b", "Broken")).incident_id
    assert queued is not None
    time.sleep(2.0)  # DBOS polls its queue every HEALING_QUEUE_POLL_SECONDS: it had the time to dequeue it
    assert state(rt, queued) == IncidentState.observing  # still queued: the wait kept the only slot
    rt.approve(waiting, "alice", "approve")
    finish(rt, waiting, "a", "Risky")
    finish(rt, queued, "b", "Broken")
