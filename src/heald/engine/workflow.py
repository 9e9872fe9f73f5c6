"""The healing workflow: :func:`heal_incident`, the whole pipeline in order, top to bottom.

Wait for the group to fill, reproduce (a CI failure), diagnose, plan, decide, wait for approval
if needed, take the target's lease, act, verify, undo what did not heal, learn; repeat with the
next candidate while attempts remain; end resolved, escalated or failed. Each stage is a DBOS
step (:mod:`heald.engine.dbos_steps`, over the plain functions of :mod:`heald.engine.steps`), so
a heald killed at any point resumes the workflow on restart, replaying completed steps from
their recorded results instead of running them again.
"""

from __future__ import annotations

from dbos import DBOS

from heald.engine.dbos_steps import (
    act_step,
    await_approval,
    await_lease,
    breaker_step,
    close_step,
    decide_step,
    diagnose_step,
    group_wait_seconds,
    healing_config,
    learn_step,
    plan_step,
    reproduce_step,
    undo_step,
    verify_step,
)
from heald.engine.steps import Closed, Tried, Verified
from heald.models import ActionStatus, DecisionKind, IncidentState
from heald.plan import candidate_key

ESCALATED = IncidentState.escalated


@DBOS.workflow(max_recovery_attempts=50)
def heal_incident(incident_id: int) -> str:
    """Heal one incident; returns its final state. Reads top to bottom as the pipeline."""
    cfg = healing_config()
    if (wait := group_wait_seconds(incident_id)) > 0:  # the incident's route's group_wait
        DBOS.sleep(wait)  # let correlated signals join before diagnosing
    reproduce_step(incident_id)  # a CI failure: reproduced in the sandbox once; the findings join as a signal
    tried: list[Tried] = []  # the candidates applied that did not heal
    attempt = 0
    while True:
        attempt += 1
        found = diagnose_step(incident_id, attempt)
        if isinstance(found, Closed):
            return found.state
        planned = plan_step(incident_id, found, tried)
        decided = decide_step(incident_id, attempt, found, planned)
        if decided.kind in (DecisionKind.escalate, DecisionKind.refuse):
            return close_step(incident_id, ESCALATED, decided.reason)
        if decided.kind == DecisionKind.approval:
            verdict = await_approval(incident_id, decided)
            if verdict != "approved":
                return close_step(incident_id, ESCALATED, verdict)
        assert decided.candidate is not None and decided.target is not None  # the gate chose one to apply
        candidate = decided.candidate
        if (busy := await_lease(incident_id, decided.target)) is not None:
            return close_step(incident_id, ESCALATED, busy)
        acted = act_step(incident_id, attempt, candidate)
        if isinstance(acted, Closed):
            return acted.state
        if acted.status == ActionStatus.succeeded:
            verified = verify_step(incident_id, acted.action_id, found.verify)
        else:
            verified = Verified(False, f"the remedy failed: {acted.output[-300:]}")
        undone = False
        if not verified.passed and acted.undo is not None:
            undone = undo_step(incident_id, acted.action_id, candidate)  # back to how it was before
        learn_step(incident_id, attempt, found.category, candidate.remedy, verified.passed, undone)
        breaker_step(incident_id, decided.target, verified.passed, verified.reason)
        if verified.passed:
            return close_step(incident_id, IncidentState.resolved,
                              f"healed by {candidate.remedy}: {verified.reason}", verified)
        tried.append(Tried(candidate_key(candidate.remedy, candidate.params), rolled_back=undone))
        if attempt >= cfg.max_attempts:
            return close_step(incident_id, ESCALATED,
                              f"attempt budget spent: {attempt} of {cfg.max_attempts} attempts made, none healed it; "
                              f"last: {verified.reason}")
        if cfg.cooldown_seconds > 0:
            DBOS.sleep(cfg.cooldown_seconds)
