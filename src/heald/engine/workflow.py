"""The healing workflow: :func:`heal_incident`, the whole pipeline in order, top to bottom.

Wait for the group to fill, reproduce (a CI failure), diagnose, plan, decide, wait for approval
if needed, take the target's lease, act, verify, undo what did not heal, learn; repeat with the
next candidate while attempts remain; end resolved, escalated or failed — or, while the target
still fails, hand it over to a human and wait for them (:mod:`heald.engine.attention`: a remedy
blocked by a cooldown or rate limit, or by heald being paused (:mod:`heald.pause`), is waited out first; a
remedy decided before a pause is not applied after it, and a human takes over). Each stage is a DBOS
step (:mod:`heald.engine.dbos_steps`, over the plain functions of :mod:`heald.engine.steps`;
plan, decide and the lease share one, as do learning, the breaker and the close), so
a heald killed at any point resumes the workflow on restart, replaying completed steps from
their recorded results instead of running them again.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbos import DBOS

from heald.engine.attention import await_human, wait_out_block
from heald.engine.dbos_steps import (
    act_step,
    await_approval,
    await_lease,
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
from heald.engine.runtime import healing_slot, rejoin_healing_queue
from heald.engine.steps import Closed, Held, Tried, Verified
from heald.models import ActionStatus, DecisionKind
from heald.plan import candidate_key


@dataclass(frozen=True)
class Stopped:
    """heald stopped healing after attempt number ``attempt``, for ``reason`` (a human takes
    over, :func:`heald.engine.attention.await_human`)."""

    attempt: int
    reason: str


@DBOS.workflow(max_recovery_attempts=50)
def heal_incident(incident_id: int, waited: bool = False) -> str:
    """Heal one incident; returns its final state. Reads top to bottom as the pipeline.
    ``waited``: the incident's group_wait is over already (it was enqueued with that delay,
    :meth:`heald.engine.runtime.Runtime.start_healing`, holding no thread meanwhile). While it
    waits for a human (an approval, a hand-over) or for a block to lift, it gives up its slot on
    the healing queue (:func:`heald.engine.runtime.leave_healing_queue`) and takes it back
    before it acts again (:func:`heald.engine.runtime.rejoin_healing_queue`)."""
    with healing_slot():  # put back when it ends off the queue (DBOS removes it as the workflow ends)
        if not waited and (wait := group_wait_seconds(incident_id)) > 0:  # the incident's route's group_wait
            DBOS.sleep(wait)  # let correlated signals join before diagnosing
        reproduce_step(incident_id)  # a CI failure: reproduced in the sandbox once; the findings join as a signal
        attempt = 0
        while True:  # one round per attempt budget: the first, then one per retry a human asks for
            healed = heal_round(incident_id, attempt)
            if not isinstance(healed, Stopped):
                return healed
            attempt = healed.attempt
            if (ended := await_human(incident_id, healed.reason)) is not None:  # the target still fails
                return ended


def heal_round(incident_id: int, attempt: int) -> str | Stopped:
    """Attempts ``attempt + 1`` … ``attempt + healing.max_attempts``: diagnose, plan, decide
    (waiting out a remedy that is only blocked), approve, act, verify, undo, learn. Returns the
    final state, or :class:`Stopped` when heald stops acting with the target still failing."""
    cfg = healing_config()
    first = attempt
    tried: list[Tried] = []  # the candidates applied that did not heal
    while True:
        rejoin_healing_queue()  # back from a human's retry: acting again takes a slot
        attempt += 1
        found = diagnose_step(incident_id, attempt)
        if isinstance(found, Closed):
            return found.state
        settled = plan_step(incident_id, attempt - first, found, tried)  # plan, decide, and an auto remedy's lease
        planned, lease = settled.planned, settled.lease
        first_decision = settled.decided or decide_step(incident_id, attempt - first, found, planned)
        decided = wait_out_block(incident_id, attempt - first, found, planned, first_decision, decide_step)
        if isinstance(decided, Closed):
            return decided.state
        if decided is not first_decision:  # decided again after a block: its lease is still to take
            lease = None
        if decided.kind in (DecisionKind.escalate, DecisionKind.refuse):
            return Stopped(attempt, decided.reason)
        if decided.kind == DecisionKind.approval:
            verdict = await_approval(incident_id, decided)
            if verdict != "approved":
                return Stopped(attempt, verdict)
        assert decided.candidate is not None and decided.target is not None  # the gate chose one to apply
        candidate = decided.candidate
        rejoin_healing_queue()  # back from an approval or a block: acting again takes a slot
        if (busy := await_lease(incident_id, decided.target, lease)) is not None:
            return Stopped(attempt, busy)
        acted = act_step(incident_id, attempt, candidate)
        if isinstance(acted, Closed):
            return acted.state
        if isinstance(acted, Held):  # paused after the gate decided: nothing applied, a human takes over
            return Stopped(attempt, acted.reason)
        if acted.status == ActionStatus.succeeded:
            verified = verify_step(incident_id, acted.action_id, found.verify)
        else:
            verified = Verified(False, f"the remedy failed: {acted.output[-300:]}")
        undone = False
        if not verified.passed and acted.undo is not None:
            undone = undo_step(incident_id, acted.action_id, candidate)  # back to how it was before
        # the outcome and the breaker's verdict; a healed incident ends here, resolved
        if (ended := learn_step(incident_id, attempt, found.category, candidate.remedy, decided.target, verified,
                                undone)) is not None:
            return ended
        final = acted.status == ActionStatus.failed and acted.output.startswith("RemedyNotApplicable:")
        tried.append(Tried(candidate_key(candidate.remedy, candidate.params), rolled_back=undone, final=final))
        if attempt - first >= cfg.max_attempts:
            return Stopped(attempt, f"attempt budget spent: {attempt - first} of {cfg.max_attempts} attempts made, "
                                    f"none healed it; last: {verified.reason}")
        if cfg.cooldown_seconds > 0:
            DBOS.sleep(cfg.cooldown_seconds)
