"""A target that still fails is never abandoned (DESIGN.md invariant 4).

Three parts, used by :func:`heald.engine.workflow.heal_incident` and by the humans' commands:

- **waiting out a block** (:func:`wait_out_block`): when the gate escalates only because every
  candidate remedy is in cooldown or over a rate limit (:mod:`heald.budgets`), or because heald
  is paused (:mod:`heald.pause`: the block lifts when a human resumes it), the healing
  waits — a durable ``DBOS.recv`` with a timeout, so a human's action wakes it — with
  exponential backoff capped at ``healing.blocked_backoff_max_seconds`` (in the spirit of
  Kubernetes' CrashLoopBackOff), and never past the moment the block lifts; each time it
  re-checks the signals (all resolved: the incident ends) and asks the gate again, for at most
  ``healing.blocked_wait_max_seconds`` in all;
- **the hand-over** (:func:`await_human`): when heald stops acting (attempt budget spent, the
  gate escalates or refuses, an approval rejected or expired, a block that did not lift) and a
  signal still fires, the incident moves to ``needs_attention`` — an open state, so it counts
  and shows as open and new signals join it — and the workflow waits for a human, reminding the
  notification channels every ``notifications.reminder_interval_seconds`` (each reminder
  audited, ``incident.reminder``; none while a silence covers it) until a human acknowledges, retries or resolves it, every
  signal resolves, or ``healing.attention_max_seconds`` passes (then it ends ``escalated``);
- neither wait holds a slot of the healing queue (``healing.max_concurrent``): each gives it up
  before its ``DBOS.recv`` (:func:`heald.engine.runtime.leave_healing_queue`), and the healing
  takes one back before it acts again (:func:`heald.engine.runtime.rejoin_healing_queue`);
- **the humans' actions** (:func:`retry`, :func:`acknowledge`, :func:`resolve`), from the API,
  the CLI and the dashboard, each audited with the human's identity: they change the store
  under the incident's row lock and wake the workflow (``send(workflow_id, message, topic)``);
  they log nothing (the CLI's ``--json`` prints JSON only): the audit entry is their record.

Why a state of its own rather than "escalated but still firing": every terminal state means
closed (``closed_at``, a final outcome, no workflow), and correlation joins signals only to open
incidents; an incident a human must still act on is open, like ``awaiting_approval``, and a
retry is then an ordinary transition (``needs_attention → diagnosing``), not the reopening of
a closed incident with a second final outcome.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from dbos import DBOS

from heald.engine.dbos_steps import healing_step, now_step
from heald.engine.runtime import APPROVAL_TOPIC, ATTENTION_TOPIC, leave_healing_queue, runtime
from heald.engine.steps import (
    Closed,
    Decided,
    Deps,
    Found,
    Planned,
    close,
    close_if_resolved_by_source,
    workflow_id,
)
from heald.models import DecisionKind, IncidentState, Outcome, OutcomeResult, utcnow
from heald.store import InvalidTransition, Store

log = structlog.get_logger("heald.engine")

NEEDS_ATTENTION = IncidentState.needs_attention
#: Where a human may resolve an incident: where its healing waits (not while it diagnoses or
#: applies a remedy, whose next step would then meet a closed incident).
RESOLVABLE = frozenset({IncidentState.observing, IncidentState.deciding, IncidentState.awaiting_approval,
                        IncidentState.verifying, IncidentState.needs_attention})
MAX_COMMENT = 5000

Send = Callable[[str, dict[str, Any], str], None]


# -- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Blocked:
    """Why every candidate remedy is blocked for now, and when the first block lifts
    (``until``: epoch seconds; None when no end is known)."""

    reason: str
    until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "until": self.until}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Blocked | None:
        return cls(data["reason"], data.get("until")) if data else None


@dataclass(frozen=True)
class Attention:
    """An incident handed over to a human, as it is now: its ``state``, whether a signal still
    fires, who acknowledged this hand-over (None: nobody) and the time (epoch seconds)."""

    state: str
    firing: bool
    acknowledged_by: str | None
    now: float
    silenced: bool = False  #: a silence (a maintenance window) covers it now: no reminders

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attention:
        return cls(data["state"], data["firing"], data.get("acknowledged_by"), data["now"], data.get("silenced", False))


# -- the stages (plain functions: dependencies in, a small typed result out) -------------------

def blocked(deps: Deps, incident_id: int, planned: Planned, decided: Decided) -> Blocked | None:
    """Is the gate's ``escalate`` a block that passes? It is when the global rate limit is
    reached, or when every candidate the environment does not refuse is in cooldown or over its
    target's rate limit (:meth:`heald.budgets.Budgets.unblocked_at`) and at least one is. Returns
    the block with the earliest time one of them lifts; None for any other decision (a refusal,
    a low confidence, an unknown cause, a silence: waiting would not change them)."""
    from heald.budgets import Budgets
    from heald.policy import refusal

    if decided.kind != DecisionKind.escalate or not planned.candidates:
        return None
    inc = deps.store.get_incident(incident_id)
    if decided.paused:  # heald is paused (heald.pause): the block lifts when a human resumes it
        return None if inc.state.terminal else Blocked(decided.reason)
    facts = Budgets(deps.config, deps.store, incident_id, supervisor=deps.supervisor)
    if inc.state.terminal or inc.category == "unknown" or facts.silenced() is not None:
        return None
    overall = deps.config.policy.budgets.rate_limit_global
    if (frees := facts.window_frees(overall.window_seconds, overall.max_actions)) is not None:
        return Blocked(facts.global_rate_limited() or "global rate limit", frees.timestamp())
    ends: list[float] = []
    for c in planned.candidates:
        try:
            target = facts.target(c)
        except ValueError:
            continue
        if refusal(c, deps.config.policy, inc.environment) or facts.heald_itself(c, target):
            continue
        at = facts.unblocked_at(target, c.remedy)
        if at is None:
            return None  # a candidate the gate could take: it escalated for another reason
        ends.append(at.timestamp())
    return Blocked(decided.reason, min(ends)) if ends else None


def recheck(deps: Deps, incident_id: int) -> Closed | None:
    """Between two waits: Closed when the incident ended meanwhile (a human resolved it) or
    every signal has resolved at its source (it ends here); else None."""
    inc = deps.store.get_incident(incident_id)
    if inc.state.terminal:
        return Closed(inc.state.value)
    return close_if_resolved_by_source(deps, inc, deps.store.signals_for(incident_id))


def record_block(deps: Deps, incident_id: int, block: Blocked, pause: float, number: int) -> None:
    """Audit one wait of a blocked remedy (``healing.blocked``)."""
    until = f"; it lifts at {time.strftime('%H:%M:%S', time.gmtime(block.until))} UTC" if block.until else ""
    deps.store.record(actor="heald", event="healing.blocked", incident_id=incident_id,
                      reason=f"wait {number}: {block.reason}{until}; heald re-checks in {pause:.3g} s",
                      details={"wait": number, "pause_s": pause, "until": block.until})
    log.info("incident.blocked", incident_id=incident_id, wait=number, pause_s=pause, reason=block.reason)


def hand_over(deps: Deps, incident_id: int, reason: str) -> str:
    """heald stops acting on the incident for ``reason``. When no signal fires any more it ends
    ``escalated`` (:func:`heald.engine.steps.close`); else it moves to ``needs_attention``
    (``closed_reason`` holds why heald handed it over), frees its leases and the channels are
    told (``escalated``). Returns the state's value."""
    from heald.budgets import release_lease

    inc = deps.store.get_incident(incident_id)
    if inc.state.terminal:
        return inc.state.value
    if inc.state != NEEDS_ATTENTION and not deps.store.still_firing(incident_id):
        return close(deps, incident_id, IncidentState.escalated, reason)
    release_lease(deps.store, incident_id)
    deps.store.transition(incident_id, NEEDS_ATTENTION, reason=f"handed over to a human, the target still fails: {reason}",
                          closed_reason=reason)
    log.info("incident.needs_attention", incident_id=incident_id, reason=reason)
    _notify(deps, incident_id, "escalated",
            f"{reason}. The target still fails: a human must retry, acknowledge or resolve it "
            f"(heald incidents retry|ack|resolve {incident_id}).")
    return NEEDS_ATTENTION.value


def attention(deps: Deps, incident_id: int, since: float) -> Attention:
    """The incident handed over at ``since`` (epoch seconds) as it is now (:class:`Attention`)."""
    from heald.budgets import Budgets

    inc = deps.store.get_incident(incident_id)
    firing = deps.store.still_firing(incident_id)
    acked = next((e.actor for e in deps.store.search_audit(incident_id=incident_id, event="incident.acknowledged",
                                                            limit=1) if e.ts.timestamp() >= since), None)
    silenced = Budgets(deps.config, deps.store, incident_id).silenced() is not None
    return Attention(inc.state.value, firing, acked, time.time(), silenced)


def remind(deps: Deps, incident_id: int, number: int, reason: str, since: float) -> None:
    """Reminder ``number`` to the channels that the incident handed over at ``since`` still
    needs a human; audited as ``incident.reminder`` (each channel's send as ``notify.*``)."""
    from heald.durations import format_duration

    waited = format_duration(max(0.0, time.time() - since))
    text = f"still failing and no human has acted for {waited}: {reason}"
    deps.store.record(actor="heald", event="incident.reminder", incident_id=incident_id,
                      reason=f"reminder {number}: {text}", details={"number": number})
    _notify(deps, incident_id, "reminder", text, number)


def end_attention(deps: Deps, incident_id: int, why: str) -> str:
    """End an incident that waited for a human: ``resolved`` when every signal resolved at its
    source (not a heal: its outcome is ``escalated``), ``escalated`` when
    ``healing.attention_max_seconds`` passed (``why`` is ``resolved`` or ``expired``). Returns
    the final state's value."""
    inc = deps.store.get_incident(incident_id)
    if inc.state.terminal:
        return inc.state.value
    if why == "resolved":
        reason = "every signal resolved at its source while the incident waited for a human; heald did not heal it"
        done = deps.store.transition(
            incident_id, IncidentState.resolved, reason=reason, recovered_at=utcnow(),
            outcome=lambda closed: Outcome(incident_id=incident_id, category=closed.category or "unknown", remedy=None,
                                           result=OutcomeResult.escalated, time_to_detect_s=closed.time_to_detect_s,
                                           time_to_recover_s=closed.time_to_recover_s))
        _notify(deps, incident_id, "resolved", reason)
        return done.state.value
    limit = deps.config.healing.attention_max_seconds
    return close(deps, incident_id, IncidentState.escalated,
                 f"no human acted within {limit:g} s of the hand-over (healing.attention_max_seconds); heald stops "
                 f"waiting and reminding: {inc.closed_reason or 'it still fails'}")


def _notify(deps: Deps, incident_id: int, event: str, reason: str, number: int = 0) -> None:
    try:
        deps.notifier.notify(incident_id, event, reason, number)
    except Exception:  # a failure to notify never breaks the healing (it is in the audit log)
        log.exception("notify.failed", incident_id=incident_id, notify_event=event)


# -- DBOS steps -----------------------------------------------------------------------------------

@healing_step(name="blocked_step")
def _blocked_step(incident_id: int, planned: Planned, decided: Decided) -> dict[str, Any] | None:
    found = blocked(runtime().deps(), incident_id, planned, decided)
    return found.to_json() if found else None


@healing_step(name="recheck_step")
def _recheck_step(incident_id: int) -> str | None:
    closed = recheck(runtime().deps(), incident_id)
    return closed.state if closed else None


@healing_step()
def record_block_step(incident_id: int, block: Blocked, pause: float, number: int) -> None:
    """:func:`record_block`, recorded."""
    record_block(runtime().deps(), incident_id, block, pause, number)


@healing_step()
def hand_over_step(incident_id: int, reason: str) -> str:
    """:func:`hand_over`, recorded."""
    return hand_over(runtime().deps(), incident_id, reason)


@healing_step(name="attention_step")
def _attention_step(incident_id: int, since: float) -> dict[str, Any]:
    return attention(runtime().deps(), incident_id, since).to_json()


@healing_step()
def remind_step(incident_id: int, number: int, reason: str, since: float) -> None:
    """:func:`remind`, recorded (a replay does not remind again)."""
    remind(runtime().deps(), incident_id, number, reason, since)


@healing_step()
def end_attention_step(incident_id: int, why: str) -> str:
    """:func:`end_attention`, recorded."""
    return end_attention(runtime().deps(), incident_id, why)


# -- durable waits (workflow code: they run inside heal_incident) ----------------------------

def wait_out_block(incident_id: int, attempt: int, found: Found, planned: Planned, decided: Decided,
                   decide: Callable[[int, int, Found, Planned], Decided]) -> Decided | Closed:
    """While the gate escalates only because every candidate is blocked (:func:`blocked`), wait
    with exponential backoff and ask ``decide`` again; see the module docstring. Returns the
    first decision that is not such a block, the last one (its reason saying how long heald
    waited) once ``healing.blocked_wait_max_seconds`` is spent, or Closed when the incident
    ended meanwhile."""
    if decided.kind != DecisionKind.escalate:
        return decided
    cfg = runtime().config.healing
    block = Blocked.from_json(_blocked_step(incident_id, planned, decided))
    if block is None:
        return decided
    started = now_step()
    delay = cfg.blocked_backoff_initial_seconds
    waits = 0
    while block is not None:
        now = now_step()
        left = cfg.blocked_wait_max_seconds - (now - started)
        if left <= 0:
            return dataclasses.replace(decided, reason=f"{decided.reason} (heald waited {now - started:.0f} s for it "
                                                       f"to lift, healing.blocked_wait_max_seconds)")
        pause = min(delay, cfg.blocked_backoff_max_seconds, left)
        if block.until is not None:
            pause = min(pause, max(block.until - now, 0.0) + 0.05)  # never sleep past the moment it lifts
        waits += 1
        record_block_step(incident_id, block, pause, waits)
        leave_healing_queue()  # no slot held while the block lasts (taken back before acting)
        DBOS.recv(ATTENTION_TOPIC, timeout_seconds=pause)  # a durable sleep that a human's action cuts short
        if (state := _recheck_step(incident_id)) is not None:
            return Closed(state)
        delay = min(delay * 2, cfg.blocked_backoff_max_seconds)
        decided = decide(incident_id, attempt, found, planned)
        if decided.kind != DecisionKind.escalate:
            return decided
        block = Blocked.from_json(_blocked_step(incident_id, planned, decided))
    return decided


def await_human(incident_id: int, reason: str) -> str | None:
    """Hand the incident over (:func:`hand_over`) and, while it needs attention, wait for a
    human, re-checking every ``healing.attention_check_seconds`` and reminding the channels
    every ``notifications.reminder_interval_seconds`` until someone acknowledges. Returns the
    final state's value, or None when a human asked for a retry (the incident is back in
    ``diagnosing``: the caller heals it again with a new attempt budget)."""
    state = hand_over_step(incident_id, reason)
    if state != NEEDS_ATTENTION.value:
        return state
    cfg = runtime().config
    every, check, limit = (cfg.notifications.reminder_interval_seconds, cfg.healing.attention_check_seconds,
                           cfg.healing.attention_max_seconds)
    since = now_step()
    next_reminder = since + every
    reminders = 0
    while True:
        now_ = Attention.from_json(_attention_step(incident_id, since))
        if IncidentState(now_.state).terminal:
            return now_.state  # a human resolved it
        if now_.state != NEEDS_ATTENTION.value:
            return None  # a human's retry moved it on
        if not now_.firing:
            return end_attention_step(incident_id, "resolved")
        if now_.now - since >= limit:
            return end_attention_step(incident_id, "expired")
        if every > 0 and now_.acknowledged_by is None and not now_.silenced and now_.now >= next_reminder:
            reminders += 1
            remind_step(incident_id, reminders, reason, since)
            next_reminder = now_.now + every
        wake = min(check, since + limit - now_.now)
        if every > 0 and now_.acknowledged_by is None:
            wake = min(wake, next_reminder - now_.now)
        leave_healing_queue()  # no slot held while it waits for a human (a retry takes one again)
        DBOS.recv(ATTENTION_TOPIC, timeout_seconds=max(wake, 0.05))


# -- the humans' actions (API, CLI, dashboard) ----------------------------------------------

def _comment(comment: str) -> str:
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"comment: at most {MAX_COMMENT} characters, got {len(comment)}")
    return comment.strip()


def _wake(send: Send, incident_id: int, message: dict[str, Any], *topics: str) -> None:
    for topic in topics:
        try:
            send(workflow_id(incident_id), message, topic)
        except Exception:  # no workflow to wake (not started yet): it reads the store when it runs
            pass


def wake_after_resume(store: Store, send: Send) -> int:
    """After a resume (:func:`heald.pause.resume`): wake every healing that waits in
    ``deciding`` (a paused gate's wait, :func:`wait_out_block`), so it asks the gate again now
    rather than at the end of its backoff. Returns how many were woken (at most 1000)."""
    waiting = store.list_incidents(state=IncidentState.deciding, limit=1000)
    for inc in waiting:
        _wake(send, inc.id, {"action": "resume"}, ATTENTION_TOPIC)
    return len(waiting)


def retry(store: Store, incident_id: int, actor: str, comment: str, send: Send) -> dict[str, Any]:
    """A human (audit actor ``actor``, e.g. ``user:alice``) asks heald to heal an incident that
    needs attention again, with a new attempt budget: it moves to ``diagnosing`` and its
    workflow wakes. Raises NotFound, InvalidTransition (it does not need attention: heald is
    healing it, or it has ended), ValueError (a comment over 5000 characters)."""
    text = _comment(comment)
    inc = store.transition(incident_id, IncidentState.diagnosing, actor=actor, only_from=[NEEDS_ATTENTION],
                           reason=f"retry asked by {actor}" + (f": {text}" if text else "")
                                  + "; heald heals it again with a new attempt budget",
                           details={"human_action": "retry", "comment": text}, closed_reason=None)
    _wake(send, incident_id, {"action": "retry", "by": actor}, ATTENTION_TOPIC)
    return {"incident_id": incident_id, "action": "retry", "by": actor, "state": inc.state.value}


def acknowledge(store: Store, incident_id: int, actor: str, comment: str) -> dict[str, Any]:
    """A human takes an open incident in hand: the reminders of its current hand-over stop
    (audited as ``incident.acknowledged``). Raises NotFound, InvalidTransition (it has ended),
    ValueError (a comment over 5000 characters)."""
    text = _comment(comment)
    inc = store.get_incident(incident_id)
    if inc.state.terminal:
        raise InvalidTransition(f"incident {incident_id} is {inc.state.value}: it has ended, there is nothing "
                                f"to acknowledge")
    store.record(actor=actor, event="incident.acknowledged", incident_id=incident_id,
                 reason=f"acknowledged by {actor}" + (f": {text}" if text else "") + "; reminders stop",
                 details={"human_action": "acknowledge", "comment": text, "state": inc.state.value})
    return {"incident_id": incident_id, "action": "acknowledge", "by": actor, "state": inc.state.value}


def resolve(store: Store, incident_id: int, actor: str, comment: str, send: Send) -> dict[str, Any]:
    """A human closes an open incident as resolved (``comment`` says how; required). Its
    outcome is ``resolved_by_human``: not a heal by heald, and learning does not count it.
    Its leases are freed and its workflow wakes and ends. Raises NotFound, InvalidTransition
    (it has ended, or heald is diagnosing it or applying a remedy right now), ValueError (no
    comment, or one over 5000 characters)."""
    from heald.budgets import release_lease

    text = _comment(comment)
    if not text:
        raise ValueError("comment: required to resolve an incident (say what fixed it)")
    inc = store.transition(
        incident_id, IncidentState.resolved, actor=actor, only_from=RESOLVABLE,
        reason=f"resolved by {actor}: {text}", details={"human_action": "resolve", "comment": text},
        outcome=lambda closed: Outcome(incident_id=incident_id, category=closed.category or "unknown", remedy=None,
                                       result=OutcomeResult.resolved_by_human, time_to_detect_s=closed.time_to_detect_s))
    release_lease(store, incident_id)
    _wake(send, incident_id, {"action": "resolve", "by": actor}, ATTENTION_TOPIC, APPROVAL_TOPIC)
    return {"incident_id": incident_id, "action": "resolve", "by": actor, "state": inc.state.value}
