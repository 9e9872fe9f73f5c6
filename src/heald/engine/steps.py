"""The healing's stages as plain functions: dependencies in, a small typed result out.

Each function here is one stage of :func:`heald.engine.workflow.heal_incident` (reproduce,
diagnose, plan, decide, lease, approval, act, verify, undo, learn, breaker, close). It takes what
it uses explicitly — a :class:`Deps` (configuration, store, supervisor, reasoners, runbooks,
notifier, the plan's random source) and plain values — and returns a frozen dataclass
(:class:`Found`, :class:`Planned`, :class:`Decided`, :class:`Acted`, :class:`Verified`, …) or
:class:`Closed` when the incident ended under it. Nothing here knows DBOS: the thin DBOS steps
of :mod:`heald.engine.dbos_steps` fetch the running :class:`~heald.engine.runtime.Runtime`'s
:class:`Deps`, call these, and record each result as JSON (``to_json``/``from_json``), so a
step can be unit-tested on a SQLite store alone (``tests/engine/test_steps.py``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from heald import pause, remedies
from heald._failpoints import failpoint
from heald.budgets import Budgets
from heald.config import HealdConfig
from heald.diagnose import Finding, Reasoner
from heald.diagnose import diagnose as run_reasoners
from heald.diagnose.runbooks import Runbook
from heald.learn import success_rates
from heald.models import (
    DETERMINISTIC_REASONERS,
    Action,
    ActionStatus,
    Decision,
    DecisionKind,
    Diagnosis,
    Incident,
    IncidentState,
    Outcome,
    OutcomeResult,
    RemedyCandidate,
    Signal,
    SignalStatus,
    utcnow,
)
from heald.notify import Notifier
from heald.plan import candidate_key, make_plan
from heald.policy import count_approvers, gate
from heald.store import InvalidTransition, NotFound, Store, audit
from heald.supervise import Supervisor
from heald.verify import checks_for
from heald.verify import verify as verify_recovery

log = structlog.get_logger("heald.engine")


def workflow_id(incident_id: int) -> str:
    """The id of the DBOS workflow that heals incident ``incident_id`` (one per incident)."""
    return f"incident-{incident_id}"


@dataclass(frozen=True)
class Deps:
    """What the stages use, passed explicitly (a Runtime builds it; a test builds its own)."""

    config: HealdConfig
    store: Store
    supervisor: Supervisor
    reasoners: Sequence[Reasoner]
    runbooks: Sequence[Runbook]
    notifier: Notifier
    rng: random.Random = field(default_factory=random.Random)  # the plan's Thompson draws


# -- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Closed:
    """The incident ended under the step (it was already terminal, or every signal resolved at
    its source); ``state`` is its final state's value."""

    state: str

    def to_json(self) -> dict[str, Any]:
        return {"closed": self.state}


@dataclass(frozen=True)
class Planned:
    """The plan the gate sees: candidate remedies, best first."""

    candidates: tuple[RemedyCandidate, ...]

    def to_json(self) -> dict[str, Any]:
        return {"candidates": [c.model_dump(mode="json") for c in self.candidates]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Planned:
        return cls(tuple(RemedyCandidate.model_validate(c) for c in data["candidates"]))


@dataclass(frozen=True)
class Found:
    """A diagnosis and what planning needs from it: the runbook's name (one of
    :attr:`Deps.runbooks`), the remedies a reasoner proposed itself, the ids of the signals still
    firing (the evidence; their labels render the runbook's parameters) and the runbook's
    verification overrides (``stabilization_seconds``, ``timeout_seconds``).

    ``recorded_plan`` is set only for a diagnosis that a heald from before the separate plan
    step recorded (its plan was made in the same step); the workflow then uses that plan."""

    diagnosis: Diagnosis
    runbook: str | None = None
    proposed: tuple[RemedyCandidate, ...] = ()
    signal_ids: tuple[int, ...] = ()
    verify: dict[str, Any] = field(default_factory=dict)
    recorded_plan: Planned | None = None

    @property
    def category(self) -> str:
        return self.diagnosis.category

    @property
    def confidence(self) -> float:
        return self.diagnosis.confidence

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, "confidence": self.confidence,
                "diagnosis": self.diagnosis.model_dump(mode="json"), "runbook": self.runbook,
                "proposed": [c.model_dump(mode="json") for c in self.proposed], "signal_ids": list(self.signal_ids),
                "verify": dict(self.verify)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Found:
        diagnosis = Diagnosis.model_validate(data["diagnosis"])
        if "candidates" in data:  # recorded by the combined diagnose-and-plan step of an older heald
            return cls(diagnosis, diagnosis.runbook, verify=data.get("verify", {}),
                       recorded_plan=Planned.from_json(data))
        return cls(diagnosis, data["runbook"], tuple(RemedyCandidate.model_validate(c) for c in data["proposed"]),
                   tuple(data["signal_ids"]), data.get("verify", {}))


@dataclass(frozen=True)
class Tried:
    """A candidate applied on this incident that did not heal it (kept by the workflow)."""

    key: str  # heald.plan.candidate_key(remedy, params)
    rolled_back: bool
    #: it failed because it cannot act here at all (RemedyNotApplicable): it would fail the same
    #: way again, so it is not tried again on this incident
    final: bool = False


@dataclass(frozen=True)
class Decided:
    """The gate's decision as recorded (``decision_id``), with the target of its candidate."""

    decision_id: int
    kind: DecisionKind
    reason: str
    required_approvals: int = 0
    target: str | None = None
    candidate: RemedyCandidate | None = None
    paused: bool = False  #: an escalation only because heald is paused (:mod:`heald.pause`): it waits for resume

    def to_json(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "kind": self.kind.value, "reason": self.reason,
                "required_approvals": self.required_approvals, "target": self.target,
                "candidate": self.candidate.model_dump(mode="json") if self.candidate else None,
                "paused": self.paused}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decided:
        return cls(data["decision_id"], DecisionKind(data["kind"]), data["reason"], data["required_approvals"],
                   data["target"], RemedyCandidate.model_validate(data["candidate"]) if data["candidate"] else None,
                   bool(data.get("paused", False)))


@dataclass(frozen=True)
class Settled:
    """What :func:`plan_and_decide` settled in one step: the plan, the gate's decision on it and,
    when the gate lets heald apply the remedy at once, whether this incident holds the lease on
    its target (None: no lease was asked for). ``decided`` is None only for a plan recorded by an
    older heald whose gate decided in a step of its own (the workflow then asks the gate)."""

    planned: Planned
    decided: Decided | None
    lease: Lease | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.planned.to_json(), "decided": self.decided.to_json() if self.decided else None,
                "lease": self.lease.to_json() if self.lease else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settled:
        return cls(Planned.from_json(data), Decided.from_json(data["decided"]) if data.get("decided") else None,
                   Lease.from_json(data["lease"]) if data.get("lease") else None)


@dataclass(frozen=True)
class Held:
    """The remedy the gate chose was not applied: heald was paused (:mod:`heald.pause`) between
    the decision and the action; ``reason`` says so."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"held": self.reason}


@dataclass(frozen=True)
class Lease:
    """Whether this incident holds the lease on a target; else who does."""

    held: bool
    incident_id: int | None = None
    holder: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"held": self.held, "incident_id": self.incident_id, "holder": self.holder}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        return cls(bool(data["held"]), data.get("incident_id"), data.get("holder"))


@dataclass(frozen=True)
class ApprovalStatus:
    """The votes on a decision so far: ``verdict`` is ``approved``, ``rejected``, ``pending``,
    ``withdrawn`` (every signal resolved while it waited: ``comment`` says so and the incident
    has ended) or ``closed`` (the incident ended meanwhile, e.g. a human resolved it);
    ``by``/``comment`` name the rejecter; ``count`` the humans who approved."""

    verdict: str
    by: str | None = None
    comment: str = ""
    count: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.verdict in ("rejected", "withdrawn"):
            return {"verdict": self.verdict, "by": self.by, "comment": self.comment}
        return {"verdict": self.verdict, "count": self.count}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApprovalStatus:
        return cls(data["verdict"], data.get("by"), data.get("comment") or "", data.get("count", 0))


@dataclass(frozen=True)
class Acted:
    """The recorded action: its id, status, output and the undo data its remedy returned."""

    action_id: int
    status: ActionStatus
    output: str
    undo: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"action_id": self.action_id, "status": self.status.value, "output": self.output, "undo": self.undo}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Acted:
        return cls(data["action_id"], ActionStatus(data["status"]), data["output"], data.get("undo"))


@dataclass(frozen=True)
class Verified:
    """The verification's verdict, and when the system recovered (None when it did not)."""

    passed: bool
    reason: str
    recovered_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason,
                "recovered_at": self.recovered_at.isoformat() if self.recovered_at else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verified:
        at = data.get("recovered_at")
        return cls(data["passed"], data["reason"], datetime.fromisoformat(at).astimezone(UTC) if at else None)


def closed_or(data: dict[str, Any]) -> Closed | None:
    """The :class:`Closed` a step recorded as ``{"closed": state}``, else None."""
    return Closed(data["closed"]) if data.get("closed") else None


# -- the stages ----------------------------------------------------------------------------

def reproduce(deps: Deps, incident_id: int) -> str | None:
    """CI incidents: reproduce the failure in the sandbox, once
    (:func:`heald.ci.incident.reproduce_incident`). Returns the verdict, or None for an incident
    that is not a CI failure or has ended."""
    from heald.ci.incident import reproduce_incident

    if deps.store.get_incident(incident_id).state.terminal:
        return None
    return reproduce_incident(deps.config, deps.store, incident_id)


def diagnose(deps: Deps, incident_id: int, attempt: int) -> Found | Closed:
    """Move the incident to ``diagnosing``, count the attempt, ask the reasoners about the
    signals still firing and record the diagnosis (:func:`record_diagnosis`). Returns Closed when
    the incident had ended or every signal resolved at its source (then it ends here).

    One read transaction, then one write transaction with the transition and the diagnosis
    (their audit entries in one batch) when every reasoner is a local, deterministic one
    (:data:`heald.models.DETERMINISTIC_REASONERS`: they answer in microseconds); with a reasoner
    that may take seconds (an LLM, a metrics or log query) the transition commits first, so the
    incident shows ``diagnosing`` while it waits, and the diagnosis after."""
    with deps.store.read():
        inc = deps.store.get_incident(incident_id)
        signals = [] if inc.state.terminal else deps.store.signals_for(incident_id)
    if inc.state.terminal:
        return Closed(inc.state.value)
    if (closed := close_if_resolved_by_source(deps, inc, signals)) is not None:
        return closed
    active = still_firing(signals)  # a condition that has resolved (a restart's blip) is not evidence
    quick = all(r.name in DETERMINISTIC_REASONERS for r in deps.reasoners)
    with deps.store.tx() as s, audit.batched(s):
        deps.store.transition(incident_id, IncidentState.diagnosing,  # the attempt counted in the same transaction
                              reason=f"attempt {attempt}: diagnosing {len(signals)} signals",
                              attempts=max(inc.attempts, attempt))
        if quick:
            finding = run_reasoners(inc, active, list(deps.reasoners), list(deps.runbooks))
            record_diagnosis(deps.store, incident_id, finding)
    if not quick:
        finding = run_reasoners(inc, active, list(deps.reasoners), list(deps.runbooks))
        with deps.store.tx() as s, audit.batched(s):
            record_diagnosis(deps.store, incident_id, finding)
    d = finding.diagnosis
    log.info("incident.diagnosed", incident_id=incident_id, attempt=attempt, category=d.category,
             confidence=d.confidence, reasoner=d.reasoner, runbook=d.runbook, signals=len(active))
    return Found(finding.diagnosis, finding.runbook.name if finding.runbook else None, tuple(finding.remedies),
                 tuple(s.id for s in active if s.id is not None),
                 finding.runbook.verify.model_dump(exclude_none=True) if finding.runbook else {})


def plan(deps: Deps, incident_id: int, found: Found, tried: Sequence[Tried], budgets: Budgets | None = None) -> Planned:
    """Rank the candidate remedies (:func:`heald.plan.make_plan`) and record the plan: the next
    candidate is one not tried yet on this incident when there is one; a remedy that was tried
    and rolled back, or that cannot act on its target, is dropped, and every candidate of an
    incident about heald itself (:func:`heald.budgets.about_heald`) is (each recorded as
    ``plan.candidate_dropped``)."""
    runbook = next((rb for rb in deps.runbooks if rb.name == found.runbook), None)
    wanted = set(found.signal_ids)
    active = [s for s in deps.store.signals_for(incident_id) if s.id in wanted]
    result = make_plan(incident_id, Finding(found.diagnosis, runbook, found.proposed), active, {t.key for t in tried},
                       success_rates(deps.store, found.category), rng=deps.rng,
                       heald=remedies.HealdSelf(deps.config, deps.supervisor),
                       service=deps.store.get_incident(incident_id).service)
    rolled_back = {t.key for t in tried if t.rolled_back}
    final = {t.key for t in tried if t.final}
    kept = [c for c in result.plan.candidates if candidate_key(c.remedy, c.params) not in rolled_back | final]
    result.dropped.extend(f"{c.remedy} {c.params}: tried on this incident, did not heal it, and was undone"
                          for c in result.plan.candidates if candidate_key(c.remedy, c.params) in rolled_back)
    result.dropped.extend(f"{c.remedy} {c.params}: failed on this incident in a way a retry repeats (it cannot act "
                          f"here); not tried again"
                          for c in result.plan.candidates if candidate_key(c.remedy, c.params) in final - rolled_back)
    facts = budgets or Budgets(deps.config, deps.store, incident_id, supervisor=deps.supervisor)
    if (itself := facts.about_heald()) is not None:
        result.dropped.extend(f"{c.remedy} {c.params}: {itself}" for c in kept)  # invariant 7: no remedy at all
        kept = []
    deps.store.add_plan(result.plan.model_copy(update={"candidates": kept}))
    for why in result.dropped:
        deps.store.record(actor="heald", event="plan.candidate_dropped", incident_id=incident_id, reason=why)
    log.info("incident.planned", incident_id=incident_id, candidates=[c.remedy for c in kept],
             dropped=len(result.dropped))
    # through JSON, as the gate always saw them (and sees them on a replay)
    return Planned(tuple(RemedyCandidate.model_validate(c.model_dump(mode="json")) for c in kept))


def decide(deps: Deps, incident_id: int, attempt: int, found: Found, planned: Planned,
           budgets: Budgets | None = None) -> Decided:
    """Run the gate (:func:`heald.policy.gate`) over the plan's candidates under the incident's
    environment and the budgets; record every skipped candidate (``gate.skipped``) and the
    decision."""
    inc = deps.store.transition(incident_id, IncidentState.deciding, reason="the gate decides")
    result = gate(found.diagnosis, list(planned.candidates), deps.config.policy,
                  budgets or Budgets(deps.config, deps.store, incident_id, supervisor=deps.supervisor),
                  attempt=attempt, max_attempts=deps.config.healing.max_attempts, environment=inc.environment)
    for skipped, why in result.skipped:
        deps.store.record(actor="policy", event="gate.skipped", incident_id=incident_id, reason=why,
                          details={"remedy": skipped.remedy, "params": skipped.params, "environment": inc.environment})
    d = result.decision
    paused = False
    if d.kind in (DecisionKind.auto, DecisionKind.approval) and d.candidate is not None:
        would = would_have(d.candidate, d.kind)
        details = {"remedy": d.candidate.remedy, "params": d.candidate.params, "target": result.target,
                   "decision": d.kind.value, "gate_reason": d.reason, "would_have": would}
        if (shadow := deps.config.policy.shadow.covers(inc.environment, found.runbook)) is not None:
            deps.store.record(actor="policy", event="action.shadowed", incident_id=incident_id,
                              reason=f"{shadow}: would have: {would}; heald did not act", details=details)
            d = Decision(kind=DecisionKind.escalate, candidate=d.candidate,
                         reason=f"{shadow}: would have: {would} ({d.reason}); heald did not act")
        elif (switch := pause.state(deps.store)).paused:
            deps.store.record(actor="policy", event="gate.paused", incident_id=incident_id,
                              reason=f"{switch.describe()}; would have: {would}; heald waits for resume",
                              details={**details, "paused_by": switch.actor, "pause_reason": switch.reason})
            d = Decision(kind=DecisionKind.escalate, candidate=d.candidate,
                         reason=f"{switch.describe()}; would have: {would} ({d.reason}); heald waits for resume")
            paused = True
    decision_id = deps.store.add_decision(incident_id, d)
    log.info("incident.decided", incident_id=incident_id, attempt=attempt, decision=d.kind.value,
             remedy=d.candidate.remedy if d.candidate else None,
             reason=d.reason)
    return Decided(decision_id, d.kind, d.reason, d.required_approvals, result.target, d.candidate, paused)


def plan_and_decide(deps: Deps, incident_id: int, attempt: int, found: Found, tried: Sequence[Tried]) -> Settled:
    """:func:`plan`, then :func:`decide` on that plan, then — for a remedy the gate applies
    without a human (``auto``) — :func:`take_lease` on its target: one step of the workflow, as
    nothing between them needs a checkpoint of its own (each records what it decided in the
    store, and none acts on a target; run again after a crash, they decide again). All in one
    transaction, their audit entries appended in one batch at its end."""
    facts = Budgets(deps.config, deps.store, incident_id, supervisor=deps.supervisor)  # plan and gate ask it once
    with deps.store.tx() as s, audit.batched(s):
        planned = plan(deps, incident_id, found, tried, facts)
        decided = decide(deps, incident_id, attempt, found, planned, facts)
        lease = None
        if decided.kind == DecisionKind.auto and decided.target is not None:
            lease = take_lease(deps, incident_id, decided.target)
    failpoint("plan.after_decide")
    return Settled(planned, decided, lease)


def would_have(candidate: RemedyCandidate, kind: DecisionKind) -> str:
    """What heald would have done, for a human: ``restart_process {service: shop} (auto)``."""
    params = ", ".join(f"{k}: {v}" for k, v in candidate.params.items())
    return f"{candidate.remedy} {{{params}}} ({kind.value})"


def take_lease(deps: Deps, incident_id: int, target: str) -> Lease:
    """Take or renew the lease on ``target`` (:func:`heald.budgets.acquire_lease`)."""
    from heald.budgets import acquire_lease

    return Lease.from_json(acquire_lease(deps.store, target, incident_id, deps.config.executor_id,
                                         deps.config.policy.budgets.lease_seconds))


def record_breaker(deps: Deps, incident_id: int, target: str, passed: bool, reason: str) -> None:
    """Count the verification on the target's circuit breaker, and free the target's lease."""
    from heald.budgets import record_verification, release_lease

    b = deps.config.policy.budgets
    record_verification(deps.store, target, passed, incident_id, b.breaker_failures, reason,
                        window_seconds=b.breaker_window_seconds, failure_rate=b.breaker_failure_rate,
                        min_attempts=b.breaker_min_attempts)
    release_lease(deps.store, incident_id, target)


def enter_approval(deps: Deps, incident_id: int, decided: Decided) -> None:
    """Move the incident to ``awaiting_approval`` and tell the channels who must approve what."""
    n = decided.required_approvals
    remedy = decided.candidate.remedy if decided.candidate else None
    deps.store.transition(incident_id, IncidentState.awaiting_approval,
                          reason=f"waiting for {n} approval{'s' if n > 1 else ''}: {decided.reason}",
                          details={"decision_id": decided.decision_id, "remedy": remedy})
    log.info("incident.awaiting_approval", incident_id=incident_id, decision_id=decided.decision_id, remedy=remedy,
             required_approvals=n)
    notify(deps, incident_id, IncidentState.awaiting_approval.value,
           f"{remedy} waits for {n} approval{'s' if n > 1 else ''}: {decided.reason}")


def approval_status(deps: Deps, incident_id: int, decision_id: int, required: int) -> ApprovalStatus:
    """The votes on decision ``decision_id``: one rejection rejects; ``required`` distinct humans
    (one per root identity, :func:`heald.policy.count_approvers`) approve."""
    if deps.store.get_incident(incident_id).state.terminal:  # a human resolved it meanwhile
        return ApprovalStatus("closed")
    votes = deps.store.approvals_for(incident_id, decision_id)
    for v in votes:
        if v["verdict"] == "reject":
            return ApprovalStatus("rejected", v["approver"], v["comment"])
    humans = count_approvers(votes, deps.store.identity_roots(v["approver"] for v in votes))
    return ApprovalStatus("approved" if len(humans) >= required else "pending", count=len(humans))


def withdraw_if_resolved(deps: Deps, incident_id: int, decision_id: int) -> ApprovalStatus | None:
    """End an approval wait whose reason is gone: when every signal of the incident has resolved
    at its source, record ``approval.withdrawn``, end the incident resolved
    (:func:`close_if_resolved_by_source`) and return the ``withdrawn`` status; else None."""
    inc = deps.store.get_incident(incident_id)
    signals = deps.store.signals_for(incident_id)
    if inc.state != IncidentState.awaiting_approval or still_firing(signals):
        return None
    reason = "approval request withdrawn: every signal resolved at its source while it waited; nothing was applied"
    deps.store.record(actor="heald", event="approval.withdrawn", incident_id=incident_id, reason=reason,
                      details={"decision_id": decision_id})
    log.info("approval.withdrawn", incident_id=incident_id, decision_id=decision_id)
    close_if_resolved_by_source(deps, inc, signals)
    return ApprovalStatus("withdrawn", comment=reason)


def expire_approval(deps: Deps, incident_id: int, ttl: float) -> str:
    """Record that no decision came within ``ttl`` seconds; returns the reason."""
    reason = f"approval expired: no decision within {ttl:g} s"
    deps.store.record(actor="heald", event="approval.expired", incident_id=incident_id, reason=reason)
    return reason


def act(deps: Deps, incident_id: int, attempt: int, candidate: RemedyCandidate) -> Acted | Closed | Held:
    """Apply ``candidate`` at most once: the action's idempotency key (per workflow, attempt and
    remedy) finds an action begun before a crash, and the remedy's guard tells whether its
    effect is already there. Returns Closed (and frees the leases) when the incident ended or
    every signal resolved before heald acted; Held (audited ``action.held``, nothing applied)
    when heald was paused after the gate decided (:mod:`heald.pause`). A remedy that raises is
    a failed action."""
    with deps.store.read():
        inc = deps.store.get_incident(incident_id)
        switch = pause.state(deps.store) if inc.state != IncidentState.acting else None
        signals = [] if inc.state.terminal or inc.state == IncidentState.acting else deps.store.signals_for(incident_id)
    if switch is not None and switch.paused:
        reason = f"{switch.describe()}; {candidate.remedy} was decided before the pause and is not applied"
        deps.store.record(actor="heald", event="action.held", incident_id=incident_id, reason=reason,
                          details={"remedy": candidate.remedy, "params": candidate.params, "attempt": attempt})
        log.info("incident.held", incident_id=incident_id, remedy=candidate.remedy, reason=reason)
        return Held(reason)
    # an incident already ``acting`` resumes an action begun before a crash: heald did act (the
    # guard below tells whether it took), so it cannot have been "resolved before heald acted"
    closed = Closed(inc.state.value) if inc.state.terminal else None if inc.state == IncidentState.acting else \
        close_if_resolved_by_source(deps, inc, signals)
    if closed is not None:
        from heald.budgets import release_lease

        release_lease(deps.store, incident_id)
        return closed
    remedy = remedies.get(candidate.remedy)
    params = remedies.validate_params(remedy.name, candidate.params)
    key = f"{workflow_id(incident_id)}:attempt-{attempt}:{remedy.name}"
    ctx = remedies.RemedyContext(config=deps.config, supervisor=deps.supervisor, incident=inc,
                                 extra={"idempotency_key": key}, store=deps.store)
    try:
        snapshot = remedy.snapshot(params, ctx)
    except remedies.RemedyError as exc:
        snapshot = {"error": str(exc)}
    with deps.store.tx() as s, audit.batched(s):  # the move to acting and the action begun: one commit, before apply
        deps.store.transition(incident_id, IncidentState.acting,
                              reason=f"applying {remedy.name} to {remedy.target(params)}",
                              details={"remedy": remedy.name, "params": candidate.params})
        action, new = deps.store.begin_action(Action(incident_id=incident_id, attempt=attempt, remedy=remedy.name,
                                                     params=candidate.params, idempotency_key=key, snapshot=snapshot,
                                                     target=str(remedy.target(params))))
    assert action.id is not None
    if not new and action.status != ActionStatus.started:
        return _acted(incident_id, remedy.name, Acted(action.id, action.status, action.output, action.undo))
    if not new and _guard_saw_effect(remedy, params, ctx, action.snapshot):
        done = deps.store.finish_action(action.id, ActionStatus.succeeded,
                                        "already applied before heald restarted (the guard saw its effect); not applied again")
        return _acted(incident_id, remedy.name, Acted(action.id, done.status, done.output, None))
    try:
        result = remedy.apply(params, ctx)
    except Exception as exc:  # noqa: BLE001 -- any failure of a remedy is an outcome, recorded with its reason
        failed = deps.store.finish_action(action.id, ActionStatus.failed, f"{exc.__class__.__name__}: {exc}")
        return _acted(incident_id, remedy.name, Acted(action.id, failed.status, failed.output, None))
    failpoint("act.after_apply")
    done = deps.store.finish_action(action.id, ActionStatus.succeeded, result.output, result.undo)
    return _acted(incident_id, remedy.name, Acted(action.id, done.status, done.output, result.undo))


def _acted(incident_id: int, remedy: str, acted: Acted) -> Acted:
    """Log the action's outcome (one ``incident.acted`` line) and return it."""
    log.info("incident.acted", incident_id=incident_id, action_id=acted.action_id, remedy=remedy,
             status=acted.status.value, output=acted.output[-500:])
    return acted


def _guard_saw_effect(remedy: remedies.Remedy[Any], params: remedies.RemedyParams, ctx: remedies.RemedyContext,
                      snapshot: dict[str, Any] | None) -> bool:
    """The remedy's guard after a crash mid-apply; a guard that cannot tell says no (apply then
    runs and records its own failure, if any)."""
    try:
        return remedy.already_applied(params, ctx, snapshot)
    except Exception:  # the guard's failure is logged; apply decides and is recorded
        log.exception("guard.failed", remedy=remedy.name)
        return False


def verify(deps: Deps, incident_id: int, action_id: int, overrides: dict[str, Any]) -> Verified:
    """Move the incident to ``verifying`` and re-check the system over the stabilization window
    (:func:`heald.verify.verify`; ``overrides`` are the runbook's ``stabilization_seconds`` and
    ``timeout_seconds``); record the verification."""
    failpoint("verify.before")
    cfg = deps.config.healing
    inc = deps.store.transition(incident_id, IncidentState.verifying, reason="verifying recovery")
    v = verify_recovery(incident_id, checks_for(inc, deps.config, deps.store, deps.supervisor),
                        stabilization=overrides.get("stabilization_seconds", cfg.stabilization_seconds),
                        interval=cfg.verify_interval_seconds,
                        timeout=overrides.get("timeout_seconds", cfg.verify_timeout_seconds), action_id=action_id)
    deps.store.add_verification(v)
    log.info("incident.verified", incident_id=incident_id, action_id=action_id, passed=v.passed, reason=v.reason)
    return Verified(v.passed, v.reason, v.recovered_at)


def learn(deps: Deps, incident_id: int, attempt: int, category: str, remedy: str, healed: bool,
          rolled_back: bool = False) -> None:
    """Record the attempt's outcome for learning (:mod:`heald.learn`): healed, not healed, or
    rolled back (not healed, and undone); ``not_applicable`` when its action failed because the
    remedy cannot act on the target at all (learning does not count it)."""
    result = OutcomeResult.healed if healed else OutcomeResult.rolled_back if rolled_back else OutcomeResult.not_healed
    if not healed and _not_applicable(deps.store, incident_id, attempt, remedy):
        result = OutcomeResult.not_applicable  # the remedy could not act on the target: no evidence against it
    deps.store.add_outcome(Outcome(incident_id=incident_id, category=category, remedy=remedy, attempt=attempt,
                                   result=result))


def _not_applicable(store: Store, incident_id: int, attempt: int, remedy: str) -> bool:
    """Whether the attempt's action of ``remedy`` failed because the remedy cannot act on its
    target at all (:class:`heald.remedies.RemedyNotApplicable`)."""
    return any(a.attempt == attempt and a.remedy == remedy and a.status == ActionStatus.failed
               and a.output.startswith(f"{remedies.RemedyNotApplicable.__name__}:")
               for a in store.actions_for(incident_id))


def finish(deps: Deps, incident_id: int, attempt: int, category: str, remedy: str, target: str, verified: Verified,
           rolled_back: bool = False) -> str | None:
    """The end of an attempt, in one step and one transaction: the attempt's outcome
    (:func:`learn`) and the verdict on the target's circuit breaker (:func:`record_breaker`) —
    both counted once, also when a crash makes the step run again (an outcome already recorded
    for the attempt means both were) — then, when it healed, the incident ends ``resolved``
    (:func:`close`, which frees every lease; returns the final state, and tells the channels
    after the commit); else the target's lease is freed for the next attempt and None is
    returned."""
    from heald.budgets import record_verification_in, release_lease

    with deps.store.tx() as s, audit.batched(s):
        if not any(o.attempt == attempt for o in deps.store.outcomes(incident_id=incident_id)):
            healed = verified.passed
            result = OutcomeResult.healed if healed else OutcomeResult.rolled_back if rolled_back \
                else OutcomeResult.not_healed
            if not healed and _not_applicable(deps.store, incident_id, attempt, remedy):
                result = OutcomeResult.not_applicable  # the remedy could not act on the target: no evidence against it
            b = deps.config.policy.budgets
            record_verification_in(s, target, verified.passed, incident_id, b.breaker_failures, verified.reason,
                                   window_seconds=b.breaker_window_seconds, failure_rate=b.breaker_failure_rate,
                                   min_attempts=b.breaker_min_attempts)
            Store.add_outcome_in(s, Outcome(incident_id=incident_id, category=category, remedy=remedy,
                                            attempt=attempt, result=result))
        if verified.passed:
            closed = _close(deps, incident_id, IncidentState.resolved, f"healed by {remedy}: {verified.reason}",
                            verified)
        else:
            release_lease(deps.store, incident_id, target)
    failpoint("finish.after_outcome")
    if verified.passed:
        return _closed(deps, incident_id, *closed)
    return None


def undo(deps: Deps, incident_id: int, action_id: int, candidate: RemedyCandidate) -> bool:
    """Undo a remedy that did not heal, with the undo data its action recorded. Returns whether
    it was undone (a failed undo is recorded as ``action.undo_failed``, and the healing goes on)."""
    remedy = remedies.get(candidate.remedy)
    action = next(a for a in deps.store.actions_for(incident_id) if a.id == action_id)
    params = remedies.validate_params(remedy.name, candidate.params)
    ctx = remedies.RemedyContext(config=deps.config, supervisor=deps.supervisor,
                                 incident=deps.store.get_incident(incident_id), store=deps.store)
    try:
        out = remedy.undo(params, ctx, action.undo or {}).output
        deps.store.record(actor="heald", event="action.undone", incident_id=incident_id, reason=out,
                          details={"action_id": action_id, "remedy": remedy.name})
        return True
    except Exception as exc:  # noqa: BLE001 -- a failed undo is recorded, and the incident goes on
        deps.store.record(actor="heald", event="action.undo_failed", incident_id=incident_id,
                          reason=f"{exc.__class__.__name__}: {exc}", details={"action_id": action_id})
        return False


def close(deps: Deps, incident_id: int, state: IncidentState, reason: str, verified: Verified | None = None) -> str:
    """End the incident as ``state`` (resolved or escalated) with its outcome and timings, free
    its leases and tell the channels; returns the final state's value. An incident already ended
    stays as it is; one that cannot take ``state`` ends ``failed`` with the reason. One
    transaction; the channels are told after it commits."""
    with deps.store.tx() as s, audit.batched(s):
        closed = _close(deps, incident_id, state, reason, verified)
    return _closed(deps, incident_id, *closed)


def _close(deps: Deps, incident_id: int, state: IncidentState, reason: str,
           verified: Verified | None) -> tuple[str, str | None]:
    """:func:`close`'s writes, in the caller's transaction: returns the final state's value and
    what to tell the channels (None: nothing, the incident had ended already)."""
    from heald.budgets import release_lease

    release_lease(deps.store, incident_id)
    inc = deps.store.get_incident(incident_id)
    if inc.state.terminal:
        return inc.state.value, None
    fields: dict[str, Any] = {}
    if verified is not None and verified.recovered_at is not None:
        fields["recovered_at"] = verified.recovered_at
    actions = deps.store.actions_for(incident_id)

    def final_outcome(closed: Incident) -> Outcome:
        return Outcome(incident_id=incident_id, category=closed.category or "unknown",
                       remedy=actions[-1].remedy if actions and state == IncidentState.resolved else None,
                       result=OutcomeResult.healed if state == IncidentState.resolved else OutcomeResult.escalated,
                       attempt=0, time_to_detect_s=closed.time_to_detect_s, time_to_recover_s=closed.time_to_recover_s)

    try:
        inc = deps.store.transition(incident_id, state, reason=reason, outcome=final_outcome, **fields)
    except (InvalidTransition, NotFound):
        log.exception("close.failed", incident_id=incident_id, state=state.value)
        inc = deps.store.transition(incident_id, IncidentState.failed, reason=f"could not close as {state.value}: {reason}")
        log.info("incident.failed", incident_id=incident_id, reason=inc.closed_reason or reason)
        return inc.state.value, inc.closed_reason or reason
    log.info(f"incident.{inc.state.value}", incident_id=incident_id, reason=reason)
    return inc.state.value, reason


def _closed(deps: Deps, incident_id: int, state: str, told: str | None) -> str:
    """After :func:`_close` committed: tell the channels (``told``: the reason) and return ``state``."""
    if told is not None:
        notify(deps, incident_id, state, told)
    return state


# -- helpers -------------------------------------------------------------------------------

def still_firing(signals: list[Signal]) -> list[Signal]:
    """The signals whose fingerprint has not resolved since (in arrival order)."""
    latest: dict[str, SignalStatus] = {}
    for s in signals:
        latest[s.fingerprint or ""] = s.status
    return [s for s in signals if s.status == SignalStatus.firing and latest[s.fingerprint or ""] == SignalStatus.firing]


def close_if_resolved_by_source(deps: Deps, incident: Incident, signals: list[Signal]) -> Closed | None:
    """Never act on a resolved alert: when every signal has resolved, end the incident
    ``resolved`` (recovered when the last signal ended) and return Closed; else None. After
    heald acted and the remedy did not heal (:func:`failed_remedies`), the closing says so and
    its outcome is ``recovered_unaided``, never a heal."""
    if still_firing(signals):
        return None
    ended = max((s.ends_at or s.received_at or utcnow() for s in signals if s.status == SignalStatus.resolved),
                default=utcnow())
    failed = failed_remedies(deps.store, incident.id)
    if failed:
        reason = (f"recovered on its own after a failed remedy: every signal resolved at its source after "
                  f"{', '.join(failed)} did not heal it (not counted as a heal)")
        result, remedy = OutcomeResult.recovered_unaided, failed[-1]
    else:
        reason, result, remedy = "every signal resolved at its source before heald acted", OutcomeResult.healed, None
    deps.store.transition(
        incident.id, IncidentState.resolved, reason=reason, recovered_at=ended,
        outcome=lambda closed: Outcome(incident_id=incident.id, category=closed.category or "unknown", remedy=remedy,
                                       result=result, time_to_detect_s=closed.time_to_detect_s,
                                       time_to_recover_s=max(0.0, (ended - incident.started_at).total_seconds())))
    log.info("incident.resolved", incident_id=incident.id, reason=reason, outcome=result.value)
    notify(deps, incident.id, IncidentState.resolved.value, reason)
    return Closed(IncidentState.resolved.value)


def failed_remedies(store: Store, incident_id: int) -> list[str]:
    """The remedies heald applied to the incident that did not heal it (a failed action, or a
    verification that did not pass after it), in order: ``restart_process (attempt 1)``."""
    verdicts = {v.action_id: v.passed for v in store.verifications_for(incident_id)}
    return [f"{a.remedy} (attempt {a.attempt})" for a in store.actions_for(incident_id)
            if a.status == ActionStatus.failed or verdicts.get(a.id) is False]


def record_diagnosis(store: Store, incident_id: int, finding: Finding) -> None:
    """Store the diagnosis the gate will see, with every reasoner's own hypothesis and the
    fallbacks taken (audit), what the LLM calls cost, and each LLM answer refused for being
    off-catalog or malformed (``llm.answer_refused``)."""
    if len(finding.hypotheses) > 1 or finding.notes:
        store.record(actor="heald", event="diagnosis.hypotheses", incident_id=incident_id,
                     reason="; ".join([*(f"{h.reasoner}: {h.category} ({h.confidence:.2f})" for h in finding.hypotheses),
                                       *finding.notes]),
                     details={"hypotheses": [h.model_dump(mode="json", exclude_none=True) for h in finding.hypotheses],
                              "notes": list(finding.notes)})
    for u in finding.usage:
        store.add_llm_usage(incident_id, u)
        if u.get("refused"):
            store.record(actor="heald", event="llm.answer_refused", incident_id=incident_id,
                         reason=f"the {u.get('reasoner', 'llm')} answer was refused, heald fell back to the deterministic "
                                f"reasoners: {u['refused']}",
                         details={"model": u.get("model"), "reasoner": u.get("reasoner")})
    store.add_diagnosis(incident_id, finding.diagnosis)


def notify(deps: Deps, incident_id: int, event: str, reason: str) -> None:
    """Tell the configured channels (:mod:`heald.notify`); a failure to notify never breaks the
    healing (it is in the audit log, and here only logged)."""
    try:
        deps.notifier.notify(incident_id, event, reason)
    except Exception:
        log.exception("notify.failed", incident_id=incident_id, notify_event=event)
