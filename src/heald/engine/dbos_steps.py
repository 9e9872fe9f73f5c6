"""The DBOS side of the stages: one thin ``@DBOS.step()`` per stage of
:mod:`heald.engine.steps`, and the durable waits (lease, approval) built from them.

Each DBOS step fetches the running Runtime's :class:`~heald.engine.steps.Deps`, calls its plain
stage function and returns the result as JSON-safe data — that is what DBOS records (pickled)
as the step's checkpoint and replays after a restart. Its typed twin here (same name without
the leading underscore) converts that data back to the stage's dataclass, so
:func:`heald.engine.workflow.heal_incident` only sees typed results, the same on the first run
and on a replay. Stages that need no checkpoint between them share one step: ``plan_step``
plans, decides and takes the target's lease (:func:`heald.engine.steps.plan_and_decide`);
``learn_step`` records the outcome and the breaker's verdict and ends a healed incident
(:func:`heald.engine.steps.finish`). The DBOS step names are those older healds recorded and
their merged results say so, so a healing an older heald left unfinished resumes: a plan
recorded without a decision is followed by ``decide_step``, an outcome recorded alone by
``breaker_step`` and ``close_step``, and a diagnosis recorded by the combined
diagnose-and-plan step brings its plan along (:attr:`Found.recorded_plan`). Every step is made
by :func:`healing_step`: it reruns on a transient database error (:data:`retried`; the store's
own transactions retry first) and, its checkpoint included, waits its turn while signals are
being stored (:mod:`heald.engine.signals_first`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from dbos import DBOS

from heald.config import HealingConfig
from heald.engine import steps
from heald.engine.runtime import APPROVAL_TOPIC, leave_healing_queue, runtime
from heald.engine.signals_first import yields_to_signals
from heald.engine.steps import (
    Acted,
    ApprovalStatus,
    Closed,
    Decided,
    Found,
    Held,
    Lease,
    Planned,
    Settled,
    Tried,
    Verified,
    closed_or,
)
from heald.models import IncidentState, RemedyCandidate
from heald.store.retry import retry_transient

P = ParamSpec("P")
R = TypeVar("R")

#: Every step reruns on a transient database error (a deadlock, a dropped connection: see
#: :mod:`heald.store.retry`) instead of failing its workflow (a workflow in ERROR is never
#: resumed by DBOS). Bounded: 12 runs within 120 s, then the error ends the workflow, and the
#: runtime's reaper ends its incident with the reason (:meth:`heald.engine.Runtime.reap_stranded_incidents`).
#: A step that found no free pooled connection (more healings and requests at once than the
#: pool, :func:`heald.store.db.pool_settings`) did nothing yet: it waits its turn again for up
#: to :data:`POOL_WAIT_SECONDS`, without spending those runs.
POOL_WAIT_SECONDS = 1800.0
retried = retry_transient(attempts=12, max_seconds=120.0, pool_wait_seconds=POOL_WAIT_SECONDS)


def healing_step(name: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a function a step of the healing workflow: a DBOS step (``name``: the step name DBOS
    records, None: the function's) that reruns on a transient database error (:data:`retried`,
    inside the step) and, with its checkpoint, waits its turn while signals are being stored
    (:func:`heald.engine.signals_first.yields_to_signals`, outside it)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        return yields_to_signals(DBOS.step(name=name)(retried(fn)))

    return decorate


def healing_config() -> HealingConfig:
    """The running heald's ``healing`` configuration (group wait, attempts, cooldown)."""
    return runtime().config.healing


def group_wait_seconds(incident_id: int) -> float:
    """How long incident ``incident_id`` waits for more signals before diagnosis: the
    ``group_wait_seconds`` of the ``correlation.routes`` entry its first signal matches, else
    ``healing.group_wait_seconds`` (:func:`heald.correlate.targets.group_wait_for`). Not a step:
    it reads only the configuration and the incident's first signal, which never changes, so a
    replay computes the same value (and the DBOS sleep it feeds is recorded)."""
    from heald.correlate.targets import group_wait_for

    rt = runtime()
    first = rt.store.signals_for(incident_id)[:1]
    return group_wait_for(first[0], rt.config) if first else rt.config.healing.group_wait_seconds


@healing_step()
def now_step() -> float:
    """The wall clock (epoch seconds), recorded so a replay sees the same value."""
    return time.time()


@healing_step()
def reproduce_step(incident_id: int) -> str | None:
    """:func:`heald.engine.steps.reproduce`, recorded."""
    return steps.reproduce(runtime().deps(), incident_id)


@healing_step(name="diagnose_step")
def _diagnose_step(incident_id: int, attempt: int) -> dict[str, Any]:
    return steps.diagnose(runtime().deps(), incident_id, attempt).to_json()


def diagnose_step(incident_id: int, attempt: int) -> Found | Closed:
    """:func:`heald.engine.steps.diagnose`, recorded."""
    data = _diagnose_step(incident_id, attempt)
    return closed_or(data) or Found.from_json(data)


@healing_step(name="plan_step")
def _plan_step(incident_id: int, attempt: int, found: Found, tried: list[Tried]) -> dict[str, Any]:
    return steps.plan_and_decide(runtime().deps(), incident_id, attempt, found, tried).to_json()


def plan_step(incident_id: int, attempt: int, found: Found, tried: list[Tried]) -> Settled:
    """:func:`heald.engine.steps.plan_and_decide` (plan, decide and, for an ``auto`` decision,
    the target's lease), recorded as one step — unless ``found`` was recorded with its plan by an
    older heald (then that plan, no step and no decision: the replay must meet the steps it
    recorded). A plan recorded alone by an older heald comes back with ``decided`` None: the
    workflow then asks the gate in the ``decide_step`` that heald recorded next."""
    if found.recorded_plan is not None:
        return Settled(found.recorded_plan, None)
    return Settled.from_json(_plan_step(incident_id, attempt, found, tried))


@healing_step(name="decide_step")
def _decide_step(incident_id: int, attempt: int, found: Found, planned: Planned) -> dict[str, Any]:
    return steps.decide(runtime().deps(), incident_id, attempt, found, planned).to_json()


def decide_step(incident_id: int, attempt: int, found: Found, planned: Planned) -> Decided:
    """:func:`heald.engine.steps.decide`, recorded."""
    return Decided.from_json(_decide_step(incident_id, attempt, found, planned))


@healing_step(name="lease_step")
def _lease_step(incident_id: int, target: str) -> dict[str, Any]:
    return steps.take_lease(runtime().deps(), incident_id, target).to_json()


def lease_step(incident_id: int, target: str) -> Lease:
    """:func:`heald.engine.steps.take_lease`, recorded."""
    return Lease.from_json(_lease_step(incident_id, target))


@healing_step()
def breaker_step(incident_id: int, target: str, passed: bool, reason: str) -> None:
    """:func:`heald.engine.steps.record_breaker`, recorded."""
    steps.record_breaker(runtime().deps(), incident_id, target, passed, reason)


@healing_step()
def enter_approval_step(incident_id: int, decided: Decided) -> None:
    """:func:`heald.engine.steps.enter_approval`, recorded."""
    steps.enter_approval(runtime().deps(), incident_id, decided)


@healing_step(name="approval_status_step")
def _approval_status_step(incident_id: int, decision_id: int, required: int) -> dict[str, Any]:
    deps = runtime().deps()
    status = steps.approval_status(deps, incident_id, decision_id, required)
    if status.verdict == "pending":  # a wait whose signals all resolved ends here (same step: replays match)
        status = steps.withdraw_if_resolved(deps, incident_id, decision_id) or status
    return status.to_json()


def approval_status_step(incident_id: int, decision_id: int, required: int) -> ApprovalStatus:
    """:func:`heald.engine.steps.approval_status`, then (still pending)
    :func:`heald.engine.steps.withdraw_if_resolved`, recorded."""
    return ApprovalStatus.from_json(_approval_status_step(incident_id, decision_id, required))


@healing_step()
def expire_approval_step(incident_id: int, ttl: float) -> str:
    """:func:`heald.engine.steps.expire_approval`, recorded."""
    return steps.expire_approval(runtime().deps(), incident_id, ttl)


@healing_step(name="act_step")
def _act_step(incident_id: int, attempt: int, candidate: RemedyCandidate) -> dict[str, Any]:
    return steps.act(runtime().deps(), incident_id, attempt, candidate).to_json()


def act_step(incident_id: int, attempt: int, candidate: RemedyCandidate) -> Acted | Closed | Held:
    """:func:`heald.engine.steps.act`, recorded (the remedy applies at most once; see there)."""
    data = _act_step(incident_id, attempt, candidate)
    if data.get("held"):
        return Held(data["held"])
    return closed_or(data) or Acted.from_json(data)


@healing_step(name="verify_step")
def _verify_step(incident_id: int, action_id: int, overrides: dict[str, Any]) -> dict[str, Any]:
    return steps.verify(runtime().deps(), incident_id, action_id, overrides).to_json()


def verify_step(incident_id: int, action_id: int, overrides: dict[str, Any]) -> Verified:
    """:func:`heald.engine.steps.verify`, recorded."""
    return Verified.from_json(_verify_step(incident_id, action_id, overrides))


@healing_step()
def undo_step(incident_id: int, action_id: int, candidate: RemedyCandidate) -> bool:
    """:func:`heald.engine.steps.undo`, recorded."""
    return steps.undo(runtime().deps(), incident_id, action_id, candidate)


@healing_step(name="learn_step")
def _learn_step(incident_id: int, attempt: int, category: str, remedy: str, target: str, verified: Verified,
                rolled_back: bool) -> dict[str, Any]:
    state = steps.finish(runtime().deps(), incident_id, attempt, category, remedy, target, verified, rolled_back)
    return {"finished": True, "state": state}


def learn_step(incident_id: int, attempt: int, category: str, remedy: str, target: str, verified: Verified,
               rolled_back: bool = False) -> str | None:
    """:func:`heald.engine.steps.finish` (outcome and breaker, then the incident's end when it
    healed), recorded as one step; returns the final state when it ended the incident. A
    ``learn_step`` recorded by an older heald (outcome alone) is followed, as it was, by
    ``breaker_step`` and — when it healed — ``close_step``."""
    data = _learn_step(incident_id, attempt, category, remedy, target, verified, rolled_back)
    if isinstance(data, dict) and data.get("finished"):
        state: str | None = data["state"]
        return state
    breaker_step(incident_id, target, verified.passed, verified.reason)
    if verified.passed:
        return close_step(incident_id, IncidentState.resolved, f"healed by {remedy}: {verified.reason}", verified)
    return None


@healing_step()
def close_step(incident_id: int, state: IncidentState, reason: str, verified: Verified | None = None) -> str:
    """:func:`heald.engine.steps.close`, recorded; returns the final state's value."""
    return steps.close(runtime().deps(), incident_id, state, reason, verified)


# -- durable waits (workflow code: they run inside heal_incident) --------------------------

def await_lease(incident_id: int, target: str, taken: Lease | None = None) -> str | None:
    """Wait (durably) until this incident holds the lease on ``target`` (one healing per target
    at a time, :mod:`heald.budgets`). Returns None once held — at once, with no step, when
    ``taken`` (the lease :func:`plan_step` asked for) is held — or the reason to escalate when
    another healing kept it longer than ``policy.budgets.lease_wait_seconds``."""
    if taken is not None and taken.held:
        return None
    budgets = runtime().config.policy.budgets
    deadline = now_step() + budgets.lease_wait_seconds
    while True:
        lease = lease_step(incident_id, target)
        if lease.held:
            return None
        if now_step() >= deadline:
            return (f"{target} is being healed by incident {lease.incident_id} ({lease.holder}); waited "
                    f"{budgets.lease_wait_seconds:g} s for it")
        DBOS.sleep(budgets.lease_poll_seconds)


def await_approval(incident_id: int, decided: Decided) -> str:
    """Wait (durably) until enough distinct humans approve (one per root identity), one
    rejects, every signal resolves (the incident then ends resolved; ingestion wakes this wait,
    :meth:`heald.engine.runtime.Runtime.wake_waiting_healings`) or the TTL passes
    (``healing.approval_ttl_seconds``). Returns ``approved`` or the reason it was not."""
    ttl = runtime().config.healing.approval_ttl_seconds
    enter_approval_step(incident_id, decided)
    deadline = now_step() + ttl
    while True:
        status = approval_status_step(incident_id, decided.decision_id, decided.required_approvals)
        if status.verdict == "approved":
            return "approved"
        if status.verdict == "rejected":
            return f"rejected by {status.by}: {status.comment or 'no reason given'}"
        if status.verdict == "withdrawn":
            return status.comment
        if status.verdict == "closed":
            return "the incident ended while it waited for approval"
        remaining = deadline - now_step()
        if remaining <= 0:
            return expire_approval_step(incident_id, ttl)
        leave_healing_queue()  # no slot held while a human decides (taken back before acting)
        DBOS.recv(APPROVAL_TOPIC, timeout_seconds=min(remaining, 300.0))
