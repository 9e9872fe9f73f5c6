"""Each stage of the healing as a plain function (heald.engine.steps), on a real SQLite store
and a real supervised process, without DBOS: dependencies in, a typed result out."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from heald import correlate
from heald.diagnose import RunbookReasoner
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.runbooks import load_runbooks
from heald.engine import steps
from heald.engine.steps import (
    Acted,
    ApprovalStatus,
    Closed,
    Decided,
    Deps,
    Found,
    Lease,
    Planned,
    Tried,
    Verified,
)
from heald.models import (
    ActionStatus,
    DecisionKind,
    IncidentState,
    OutcomeResult,
    Role,
    Signal,
    SignalStatus,
)
from heald.notify import Notifier
from heald.plan import candidate_key
from heald.store import Store
from heald.supervise import Supervisor
from tests.conftest import make_config
from tests.engine.test_workflow import PY, alert, runbook


def make_deps(tmp_path: Path, *, risk: str = "low", confidence: float = 0.95, **data: object) -> Deps:
    cfg = make_config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
                      runbooks=[str(runbook(tmp_path, risk=risk, confidence=confidence))], **data)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.database)
    store.migrate()
    rbs = load_runbooks(cfg.runbooks, cfg.default_runbooks)
    return Deps(config=cfg, store=store, supervisor=Supervisor(cfg), reasoners=[RunbookReasoner(rbs),
                KnowledgeBaseReasoner()], runbooks=rbs, notifier=Notifier(cfg.notifications, store),
                rng=random.Random(7))


@pytest.fixture
def deps(tmp_path: Path) -> Iterator[Deps]:
    d = make_deps(tmp_path)
    yield d
    d.supervisor.stop_all()
    d.store.close()


def ingest(deps: Deps, signal: Signal) -> correlate.IngestResult:
    with deps.store.tx() as session:
        return correlate.ingest(session, signal, deps.config)


def opened(deps: Deps) -> int:
    result = ingest(deps, alert())
    assert result.opened and result.incident_id is not None
    return result.incident_id


def events(deps: Deps, incident_id: int) -> list[str]:
    return [e.event for e in deps.store.audit_entries(incident_id=incident_id)]


def test_diagnose_finds_the_runbook_and_the_evidence(deps: Deps) -> None:
    inc_id = opened(deps)
    ingest(deps, alert())  # a second firing signal of the same alert
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    assert (found.category, found.confidence, found.runbook) == ("svc_broken", 0.95, "svc-broken")
    assert found.signal_ids == tuple(s.id for s in deps.store.signals_for(inc_id))
    inc = deps.store.get_incident(inc_id)
    assert inc.state == IncidentState.diagnosing and inc.attempts == 1 and inc.category == "svc_broken"
    assert [d.category for d in deps.store.diagnoses_for(inc_id)] == ["svc_broken"]


def test_diagnose_ends_an_incident_whose_signals_resolved(deps: Deps) -> None:
    inc_id = opened(deps)
    ingest(deps, alert(SignalStatus.resolved))
    assert steps.diagnose(deps, inc_id, attempt=1) == Closed("resolved")
    inc = deps.store.get_incident(inc_id)
    assert inc.state == IncidentState.resolved and "resolved at its source" in inc.closed_reason
    assert [o.result for o in deps.store.outcomes(incident_id=inc_id)] == [OutcomeResult.healed]
    assert steps.diagnose(deps, inc_id, attempt=2) == Closed("resolved")  # an ended incident stays ended
    assert deps.store.diagnoses_for(inc_id) == []


def test_found_survives_its_checkpoint_and_an_older_record_brings_its_plan(deps: Deps) -> None:
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    assert Found.from_json(found.to_json()) == found
    old = {"category": "svc_broken", "confidence": 0.95, "diagnosis": found.diagnosis.model_dump(mode="json"),
           "candidates": [{"remedy": "restart_process", "params": {"service": "svc"}, "risk": "low"}],
           "verify": {"timeout_seconds": 5.0}}
    older = Found.from_json(old)
    assert older.recorded_plan is not None and [c.remedy for c in older.recorded_plan.candidates] == ["restart_process"]
    assert older.runbook == "svc-broken" and older.verify == {"timeout_seconds": 5.0}


def test_plan_renders_the_runbook_and_drops_what_was_undone(deps: Deps) -> None:
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    planned = steps.plan(deps, inc_id, found, [])
    assert [(c.remedy, c.params, c.runbook) for c in planned.candidates] == \
        [("restart_process", {"service": "svc"}, "svc-broken")]  # ${service} rendered from the signal
    assert Planned.from_json(planned.to_json()) == planned
    assert [len(p.candidates) for p in deps.store.plans_for(inc_id)] == [1]

    c = planned.candidates[0]
    undone = Tried(candidate_key(c.remedy, c.params), rolled_back=True)
    assert steps.plan(deps, inc_id, found, [undone]).candidates == ()
    dropped = [e for e in deps.store.audit_entries(incident_id=inc_id) if e.event == "plan.candidate_dropped"]
    assert len(dropped) == 1 and "was undone" in dropped[0].reason
    assert steps.plan(deps, inc_id, found, [Tried(undone.key, rolled_back=False)]).candidates == planned.candidates


def test_decide_auto_for_a_low_risk_sure_diagnosis(deps: Deps) -> None:
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    decided = steps.decide(deps, inc_id, 1, found, steps.plan(deps, inc_id, found, []))
    assert decided.kind == DecisionKind.auto and decided.target == "service:svc"
    assert decided.candidate is not None and decided.candidate.remedy == "restart_process"
    assert Decided.from_json(decided.to_json()) == decided
    assert deps.store.latest_decision_id(inc_id) == decided.decision_id
    assert deps.store.get_incident(inc_id).state == IncidentState.deciding


def test_decide_escalates_with_nothing_to_apply(deps: Deps) -> None:
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    decided = steps.decide(deps, inc_id, 1, found, Planned(()))
    assert decided.kind == DecisionKind.escalate and decided.target is None and decided.candidate is None


def test_approval_counts_humans_not_names(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, risk="high")  # high risk: two approvals
    try:
        inc_id = opened(deps)
        found = steps.diagnose(deps, inc_id, attempt=1)
        assert isinstance(found, Found)
        decided = steps.decide(deps, inc_id, 1, found, steps.plan(deps, inc_id, found, []))
        assert decided.kind == DecisionKind.approval and decided.required_approvals == 2
        steps.enter_approval(deps, inc_id, decided)
        assert deps.store.get_incident(inc_id).state == IncidentState.awaiting_approval
        assert steps.approval_status(deps, inc_id, decided.decision_id, 2) == ApprovalStatus("pending", count=0)

        deps.store.add_token(name="alice-laptop", role=Role.operator, token_hash="h" * 64, prefix="p1",
                             created_by="test", sponsor="alice")  # alice's second identity
        deps.store.add_approval(inc_id, decided.decision_id, "alice", "approve")
        deps.store.add_approval(inc_id, decided.decision_id, "alice-laptop", "approve")
        status = steps.approval_status(deps, inc_id, decided.decision_id, 2)
        assert status == ApprovalStatus("pending", count=1)
        assert ApprovalStatus.from_json(status.to_json()) == status
        deps.store.add_approval(inc_id, decided.decision_id, "bob", "approve")
        assert steps.approval_status(deps, inc_id, decided.decision_id, 2).verdict == "approved"
        deps.store.add_approval(inc_id, decided.decision_id, "carol", "reject", "not now")
        assert steps.approval_status(deps, inc_id, decided.decision_id, 2) == \
            ApprovalStatus("rejected", "carol", "not now")

        assert steps.expire_approval(deps, inc_id, 0.5) == "approval expired: no decision within 0.5 s"
        assert "approval.expired" in events(deps, inc_id)
    finally:
        deps.store.close()


def test_act_applies_once_per_attempt(deps: Deps) -> None:
    deps.supervisor.start_all()
    first_pid = deps.supervisor.get("svc").identity().pid
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    decided = steps.decide(deps, inc_id, 1, found, steps.plan(deps, inc_id, found, []))
    assert decided.candidate is not None
    acted = steps.act(deps, inc_id, 1, decided.candidate)
    assert isinstance(acted, Acted) and acted.status == ActionStatus.succeeded
    assert Acted.from_json(acted.to_json()) == acted
    second_pid = deps.supervisor.get("svc").identity().pid
    assert second_pid != first_pid
    again = steps.act(deps, inc_id, 1, decided.candidate)  # a replay of the same attempt: the recorded action
    assert again == Acted(acted.action_id, ActionStatus.succeeded, acted.output, acted.undo)
    assert deps.supervisor.get("svc").identity().pid == second_pid
    assert len(deps.store.actions_for(inc_id)) == 1 and deps.store.get_incident(inc_id).state == IncidentState.acting


def test_act_never_acts_on_a_resolved_alert(deps: Deps) -> None:
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    decided = steps.decide(deps, inc_id, 1, found, steps.plan(deps, inc_id, found, []))
    assert decided.candidate is not None and decided.target is not None
    assert steps.take_lease(deps, inc_id, decided.target).held
    ingest(deps, alert(SignalStatus.resolved))
    assert steps.act(deps, inc_id, 1, decided.candidate) == Closed("resolved")
    assert deps.store.actions_for(inc_id) == []
    assert "lease.released" in events(deps, inc_id)


def test_a_target_is_leased_to_one_incident_until_the_breaker_step(deps: Deps) -> None:
    one, other = opened(deps), 9999
    assert steps.take_lease(deps, one, "service:svc") == Lease(True)
    busy = steps.take_lease(deps, other, "service:svc")
    assert not busy.held and busy.incident_id == one and busy.holder == deps.config.executor_id
    assert Lease.from_json(busy.to_json()) == busy
    steps.record_breaker(deps, one, "service:svc", passed=False, reason="still down")
    assert steps.take_lease(deps, other, "service:svc").held
    from heald.budgets import breakers

    [breaker] = breakers(deps.store)
    assert breaker["target"] == "service:svc" and breaker["failures"] == 1


def acted(deps: Deps) -> tuple[int, Decided, Acted]:
    """An incident walked through diagnose, plan, decide and act (a real restart)."""
    deps.supervisor.start_all()
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    decided = steps.decide(deps, inc_id, 1, found, steps.plan(deps, inc_id, found, []))
    assert decided.candidate is not None
    done = steps.act(deps, inc_id, 1, decided.candidate)
    assert isinstance(done, Acted) and done.status == ActionStatus.succeeded
    return inc_id, decided, done


def test_verify_passes_when_the_alert_resolves_and_fails_at_its_timeout(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, healing={"verify_timeout_seconds": 0.5})
    try:
        inc_id, _, _ = acted(deps)
        failed = steps.verify(deps, inc_id, action_id=1, overrides={})
        assert not failed.passed and failed.recovered_at is None
        assert deps.store.get_incident(inc_id).state == IncidentState.verifying
        ingest(deps, alert(SignalStatus.resolved))
        passed = steps.verify(deps, inc_id, action_id=1, overrides={"stabilization_seconds": 0.1})
        assert passed.passed and passed.recovered_at is not None
        assert Verified.from_json(passed.to_json()) == passed
        assert [v.passed for v in deps.store.verifications_for(inc_id)] == [False, True]
    finally:
        deps.supervisor.stop_all()
        deps.store.close()


def test_undo_without_an_undo_is_recorded_and_the_healing_goes_on(deps: Deps) -> None:
    inc_id, decided, done = acted(deps)
    assert decided.candidate is not None
    assert steps.undo(deps, inc_id, done.action_id, decided.candidate) is False
    [failed] = [e for e in deps.store.audit_entries(incident_id=inc_id) if e.event == "action.undo_failed"]
    assert "has no undo" in failed.reason


def test_learn_and_close_record_the_outcomes(deps: Deps) -> None:
    inc_id, _, _ = acted(deps)
    steps.learn(deps, inc_id, 1, "svc_broken", "restart_process", healed=False, rolled_back=True)
    ingest(deps, alert(SignalStatus.resolved))
    verified = steps.verify(deps, inc_id, action_id=1, overrides={"stabilization_seconds": 0.1})
    assert steps.close(deps, inc_id, IncidentState.resolved, "healed by restart_process", verified) == "resolved"
    inc = deps.store.get_incident(inc_id)
    assert inc.state == IncidentState.resolved and inc.recovered_at == verified.recovered_at
    assert [(o.result, o.remedy, o.attempt) for o in deps.store.outcomes(incident_id=inc_id)] == \
        [(OutcomeResult.rolled_back, "restart_process", 1), (OutcomeResult.healed, "restart_process", 0)]
    # an ended incident stays as it ended
    assert steps.close(deps, inc_id, IncidentState.escalated, "too late") == "resolved"
    assert len(deps.store.outcomes(incident_id=inc_id)) == 2


def test_close_that_cannot_take_the_state_fails_with_the_reason(deps: Deps) -> None:
    inc_id = opened(deps)  # observing: cannot go to verifying
    state = steps.close(deps, inc_id, IncidentState.verifying, "not a closing state")
    assert state == "failed"
    assert "could not close as verifying" in deps.store.get_incident(inc_id).closed_reason


def test_reproduce_is_none_for_a_service_incident(deps: Deps) -> None:
    assert steps.reproduce(deps, opened(deps)) is None


def test_plan_and_decide_plans_decides_and_leases_an_auto_remedy_in_one_stage(deps: Deps) -> None:
    inc_id = opened(deps)
    found = steps.diagnose(deps, inc_id, attempt=1)
    assert isinstance(found, Found)
    settled = steps.plan_and_decide(deps, inc_id, 1, found, [])
    assert [c.remedy for c in settled.planned.candidates] == ["restart_process"]
    assert settled.decided is not None and settled.decided.kind == DecisionKind.auto
    assert settled.lease == Lease(True)  # the target is this incident's: nothing else to wait for
    assert steps.Settled.from_json(settled.to_json()) == settled
    assert steps.Settled.from_json({"candidates": settled.to_json()["candidates"]}).decided is None  # an older record
    again = steps.plan_and_decide(deps, inc_id, 1, found, [])  # run again (a crash before its checkpoint)
    assert again.lease == Lease(True) and again.decided is not None and again.decided.kind == DecisionKind.auto


def test_plan_and_decide_takes_no_lease_for_a_remedy_that_waits_for_approval(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, risk="high")
    try:
        inc_id = opened(deps)
        found = steps.diagnose(deps, inc_id, attempt=1)
        assert isinstance(found, Found)
        settled = steps.plan_and_decide(deps, inc_id, 1, found, [])
        assert settled.decided is not None and settled.decided.kind == DecisionKind.approval
        assert settled.lease is None
    finally:
        deps.store.close()


def test_finish_counts_the_outcome_and_the_breaker_once_when_it_runs_again(deps: Deps) -> None:
    """A crash after finish's transaction and before its checkpoint runs it again: the outcome
    and the breaker's verdict are not counted twice; a healed incident ends resolved once."""
    from heald.store.tables import CircuitBreakerRow

    inc_id = opened(deps)
    steps.diagnose(deps, inc_id, attempt=1)
    failed = Verified(False, "still down")
    assert steps.finish(deps, inc_id, 1, "svc_broken", "restart_process", "service:svc", failed) is None
    assert steps.finish(deps, inc_id, 1, "svc_broken", "restart_process", "service:svc", failed) is None
    assert [(o.attempt, o.result) for o in deps.store.outcomes(incident_id=inc_id)] == [(1, OutcomeResult.not_healed)]
    with deps.store.read() as s:
        row = s.get(CircuitBreakerRow, "service:svc")
        assert row is not None and row.failures == 1  # once, not twice

    healed = Verified(True, "all checks passed")
    assert steps.finish(deps, inc_id, 2, "svc_broken", "restart_process", "service:svc", healed) == "resolved"
    assert steps.finish(deps, inc_id, 2, "svc_broken", "restart_process", "service:svc", healed) == "resolved"
    assert [(o.attempt, o.result) for o in deps.store.outcomes(incident_id=inc_id)] == \
        [(1, OutcomeResult.not_healed), (2, OutcomeResult.healed), (0, OutcomeResult.healed)]
    assert deps.store.get_incident(inc_id).state == IncidentState.resolved
    assert events(deps, inc_id).count("outcome.recorded") == 3
