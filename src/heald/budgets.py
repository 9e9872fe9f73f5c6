"""Budgets and loop prevention, kept in the store (``policy.budgets`` in ``heald.yaml``).

Everything here is read from or written to the database, so that it holds across a restart of
heald and across several workers sharing one database:

- cooldowns per (target, remedy) and rate limits per target and globally are counted over the
  stored actions (``actions.target``, ``actions.started_at``);
- a **lease** per target (``target_leases``) lets one healing at a time act on a target: taken
  in one transaction (serialized by SQLite's ``BEGIN IMMEDIATE`` or a PostgreSQL advisory
  lock) before acting, released after verifying, and free once expired (a dead worker's);
- a **circuit breaker** per target (``circuit_breakers``) opens after
  ``breaker_failures`` consecutive failed verifications, or when the share of failures among
  the remedies verified on it within ``breaker_window_seconds`` reaches
  ``breaker_failure_rate`` (after ``breaker_min_attempts``: a flapping target), and stays open
  until a human resets it.

:class:`Budgets` answers the policy gate's questions (:class:`heald.policy.GateFacts`),
including whether a candidate aims at heald itself (its own process, API port or state), and
when a block lifts (:meth:`Budgets.unblocked_at`: the cooldown's end, the time a full rate-limit
window frees), so that the workflow waits a blocked remedy out (:mod:`heald.engine.attention`).
Every change here is written to the audit log in the same transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald import remedies
from heald.durations import format_duration
from heald.models import RemedyCandidate, utcnow
from heald.store import NotFound, Store, audit
from heald.store.db import lock
from heald.store.tables import ActionRow, CircuitBreakerRow, IncidentRow, TargetLeaseRow

if TYPE_CHECKING:
    from heald.config import HealdConfig
    from heald.supervise import Supervisor


def target_of(remedy: str, params: dict[str, Any]) -> str:
    """What remedy ``remedy`` with ``params`` acts on (``service:shop``, ``path:/var/x``…).
    Raises RemedyParamsError for an unknown remedy or invalid parameters."""
    r = remedies.get(remedy)
    return str(r.target(remedies.validate_params(remedy, params)))


class Budgets:
    """The gate's view of budgets, breakers and heald itself for one decision at time ``now``
    (UTC; default: the current time). ``incident_id`` is the incident being decided (its own
    earlier actions do not put it in cooldown). See :class:`heald.policy.GateFacts`."""

    def __init__(self, config: HealdConfig, store: Store, incident_id: int, *,
                 supervisor: Supervisor | None = None, now: datetime | None = None):
        self._about: tuple[str | None] | None = None  # about_heald's answer, once asked
        self.config = config
        self.budgets = config.policy.budgets
        self.store = store
        self.incident_id = incident_id
        self.supervisor = supervisor
        self.now = now or utcnow()

    def target(self, candidate: RemedyCandidate) -> str:
        return target_of(candidate.remedy, candidate.params)

    def cooldown(self, target: str, remedy: str) -> str | None:
        cool = self.budgets.remedy_cooldown_seconds
        if cool <= 0:
            return None
        with self.store.read() as s:
            row = s.scalar(sa.select(ActionRow).where(
                ActionRow.target == target, ActionRow.remedy == remedy, ActionRow.incident_id != self.incident_id,
                ActionRow.started_at >= self.now - timedelta(seconds=cool)).order_by(ActionRow.started_at.desc()).limit(1))
        if row is None:
            return None
        ago = (self.now - row.started_at).total_seconds()
        return (f"cooldown: {remedy} was applied to {target} {format_duration(ago)} ago by incident "
                f"{row.incident_id}; the cooldown is {format_duration(cool)}")

    def _count(self, window: float, target: str | None = None) -> int:
        stmt = sa.select(sa.func.count()).select_from(ActionRow).where(
            ActionRow.started_at >= self.now - timedelta(seconds=window))
        if target is not None:
            stmt = stmt.where(ActionRow.target == target)
        with self.store.read() as s:
            return s.scalar(stmt) or 0

    def target_rate_limited(self, target: str) -> str | None:
        limit = self.budgets.rate_limit_per_target
        n = self._count(limit.window_seconds, target)
        if n < limit.max_actions:
            return None
        return (f"rate limit: {n} remedies applied to {target} in the last {format_duration(limit.window_seconds)} "
                f"(at most {limit.max_actions})")

    def global_rate_limited(self) -> str | None:
        limit = self.budgets.rate_limit_global
        n = self._count(limit.window_seconds)
        if n < limit.max_actions:
            return None
        return (f"global rate limit: {n} remedies applied in the last {format_duration(limit.window_seconds)} "
                f"(at most {limit.max_actions}); heald acts no more until the window moves on")

    # -- what blocks, and until when (the workflow waits a blocked remedy out) ------------------
    def cooldown_ends(self, target: str, remedy: str) -> datetime | None:
        """When the cooldown of ``remedy`` on ``target`` ends (UTC), or None when none holds now."""
        cool = self.budgets.remedy_cooldown_seconds
        if cool <= 0:
            return None
        with self.store.read() as s:
            last = s.scalar(sa.select(sa.func.max(ActionRow.started_at)).where(
                ActionRow.target == target, ActionRow.remedy == remedy, ActionRow.incident_id != self.incident_id,
                ActionRow.started_at >= self.now - timedelta(seconds=cool)))
        return _aware(last) + timedelta(seconds=cool) if last is not None else None

    def window_frees(self, window: float, max_actions: int, target: str | None = None) -> datetime | None:
        """When fewer than ``max_actions`` actions (on ``target``, or anywhere) lie in the sliding
        window of ``window`` seconds again, or None when there are fewer now."""
        stmt = sa.select(ActionRow.started_at).where(ActionRow.started_at >= self.now - timedelta(seconds=window))
        if target is not None:
            stmt = stmt.where(ActionRow.target == target)
        with self.store.read() as s:
            starts = sorted(_aware(t) for t in s.scalars(stmt))
        if len(starts) < max_actions:
            return None
        return starts[len(starts) - max_actions] + timedelta(seconds=window)  # the oldest that must leave

    def unblocked_at(self, target: str, remedy: str) -> datetime | None:
        """When ``remedy`` on ``target`` passes the cooldown and both rate limits again (UTC, the
        latest of the three), or None when none of them blocks it now."""
        per_target, overall = self.budgets.rate_limit_per_target, self.budgets.rate_limit_global
        ends = [t for t in (self.cooldown_ends(target, remedy),
                            self.window_frees(per_target.window_seconds, per_target.max_actions, target),
                            self.window_frees(overall.window_seconds, overall.max_actions)) if t is not None]
        return max(ends) if ends else None

    def breaker_open(self, target: str) -> str | None:
        with self.store.read() as s:
            row = s.get(CircuitBreakerRow, target)
            if row is None or row.opened_at is None:
                return None
            return (f"circuit breaker open for {target} since {row.opened_at:%Y-%m-%d %H:%M:%S} UTC "
                    f"({row.opened_reason})")

    def heald_itself(self, candidate: RemedyCandidate, target: str) -> str | None:
        return heald_itself(self.config, candidate, target, self.supervisor)

    def about_heald(self) -> str | None:
        """:func:`about_heald` for the incident (asked once: the signals it reads are the same
        for the whole decision)."""
        if self._about is None:
            self._about = (about_heald(self.config, self.store, self.incident_id, self.supervisor),)
        return self._about[0]

    def silenced(self) -> str | None:
        from heald.correlate.silences import active_silence, describe

        with self.store.read() as s:
            inc = s.get(IncidentRow, self.incident_id)
            if inc is None:
                return None
            labels = {k: str(v) for k, v in (inc.labels or {}).items()}
            if inc.service:
                labels.setdefault("service", inc.service)
            row = active_silence(s, labels, self.now)
            return describe(row) if row is not None else None


def _aware(t: datetime) -> datetime:
    """A stored time as aware UTC (SQLite hands back naive datetimes)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# -- heald itself -------------------------------------------------------------------------------

def heald_itself(config: HealdConfig, candidate: RemedyCandidate, target: str,
                 supervisor: Supervisor | None = None) -> str | None:
    """Why ``candidate`` (acting on ``target``) would act on heald itself, or None. Each remedy
    answers for its own kind of target (:meth:`heald.remedies.Remedy.touches_heald`): a
    service whose process is this heald or whose probes point at heald's API port, a URL on
    heald's API address, a path overlapping heald's state directory, database or config file,
    a command run there. Raises RemedyParamsError for an unknown remedy or invalid parameters."""
    remedy = remedies.get(candidate.remedy)
    params = remedies.validate_params(candidate.remedy, candidate.params)
    heald = remedies.HealdSelf(config, supervisor)
    aim = remedy.target(params)
    if aim.kind == "service" and heald.is_own_name(aim.name):
        return f"refused: {aim} is heald itself (identity.names: {', '.join(config.identity.names)})"
    return remedy.touches_heald(params, heald)


#: The kinds of CI signals (:data:`heald.ci.incident.FAILED` and ``REPRODUCED``; that layer is
#: above this one): their service is a repository, which may be named like heald.
CI_SIGNAL_KINDS = ("ci_failed", "ci_reproduced")


def about_heald(config: HealdConfig, store: Store, incident_id: int, supervisor: Supervisor | None = None) -> str | None:
    """Why incident ``incident_id`` is about heald itself (DESIGN.md invariant 7), or None: its
    service, or any of its signals, names heald by one of its identities
    (:meth:`heald.remedies.HealdSelf.names_heald`: its names, its API's addresses, its pid).
    Such an incident gets no remedy, whatever the remedy would act on."""
    heald = remedies.HealdSelf(config, supervisor)
    signals = store.signals_for(incident_id)
    if signals and all(s.kind in CI_SIGNAL_KINDS for s in signals):
        return None  # a CI failure names a repository (maybe heald's source), never the running heald
    inc = store.get_incident(incident_id)
    found = heald.names_heald(inc.service, {k: str(v) for k, v in (inc.labels or {}).items()})
    for sig in signals:
        if found is not None:
            break
        found = heald.names_heald(sig.service, {k: str(v) for k, v in sig.labels.items()})
    if found is None:
        return None
    return (f"refused: this incident is about heald itself ({found}); heald never remedies itself, "
            f"a human must look")


# -- leases ---------------------------------------------------------------------------------------

def acquire_lease(store: Store, target: str, incident_id: int, holder: str, ttl: float) -> dict[str, Any]:
    """Take (or renew) the lease on ``target`` for ``incident_id`` for ``ttl`` seconds, in one
    transaction. Returns {"held": True} or {"held": False, "incident_id": the holder's incident,
    "holder": its worker, "expires_at": ISO time}. An expired lease is taken over."""
    now = utcnow()
    with store.tx() as s:
        lock(s, f"heald.lease.{target}")
        row = s.get(TargetLeaseRow, target, with_for_update=True)
        if row is not None and row.incident_id != incident_id and row.expires_at > now:
            return {"held": False, "incident_id": row.incident_id, "holder": row.holder,
                    "expires_at": row.expires_at.isoformat()}
        expires = now + timedelta(seconds=ttl)
        if row is None:
            s.add(TargetLeaseRow(target=target, incident_id=incident_id, holder=holder, acquired_at=now,
                                 expires_at=expires))
            s.flush()
            took_over = None
        else:
            took_over = row.incident_id if row.incident_id != incident_id else None
            row.incident_id, row.holder, row.expires_at = incident_id, holder, expires
            if took_over is not None:
                row.acquired_at = now
        if row is None or took_over is not None:
            audit.append_later(s, actor="heald", event="lease.acquired", incident_id=incident_id,
                         reason=f"{target} is this incident's to act on until {expires:%H:%M:%S} UTC"
                                + (f" (incident {took_over}'s lease had expired)" if took_over else ""),
                         details={"target": target, "holder": holder, "expires_at": expires.isoformat()})
        return {"held": True}


def release_lease(store: Store, incident_id: int, target: str | None = None) -> list[str]:
    """Release the leases ``incident_id`` holds (only the one on ``target`` when given);
    returns the targets released."""
    with store.tx() as s:
        stmt = sa.select(TargetLeaseRow).where(TargetLeaseRow.incident_id == incident_id)
        if target is not None:
            stmt = stmt.where(TargetLeaseRow.target == target)
        rows = list(s.scalars(stmt))
        for row in rows:
            s.delete(row)
            audit.append_later(s, actor="heald", event="lease.released", incident_id=incident_id,
                         reason=f"{row.target} is free for other healings", details={"target": row.target})
        return [r.target for r in rows]


def leases(store: Store) -> list[dict[str, Any]]:
    """Every lease held now (expired ones included, marked), by target."""
    now = utcnow()
    with store.read() as s:
        return [{"target": r.target, "incident_id": r.incident_id, "holder": r.holder,
                 "acquired_at": r.acquired_at.isoformat(), "expires_at": r.expires_at.isoformat(),
                 "expired": r.expires_at <= now}
                for r in s.scalars(sa.select(TargetLeaseRow).order_by(TargetLeaseRow.target))]


# -- circuit breakers -----------------------------------------------------------------------------

def _breaker_json(row: CircuitBreakerRow) -> dict[str, Any]:
    return {"target": row.target, "state": "open" if row.opened_at else "closed", "failures": row.failures,
            "opened_at": row.opened_at.isoformat() if row.opened_at else None, "opened_reason": row.opened_reason,
            "reset_at": row.reset_at.isoformat() if row.reset_at else None, "reset_by": row.reset_by,
            "updated_at": row.updated_at.isoformat()}


def record_verification(store: Store, target: str, passed: bool, incident_id: int, threshold: int,
                        reason: str = "", *, window_seconds: float = 0.0, failure_rate: float = 1.0,
                        min_attempts: int = 1) -> dict[str, Any]:
    """Count a verification of a remedy on ``target`` (``passed`` False: the action or its
    verification failed). The breaker opens on the ``threshold``-th failure in a row, or when
    at least ``min_attempts`` verdicts fell in the last ``window_seconds`` (since the last
    reset, if later; 0 turns this off) and the share of failures among them is at least
    ``failure_rate`` (:func:`_trip_reason`). A pass resets the count of consecutive failures;
    an open breaker stays open: only a human closes it. Returns the breaker as JSON-ready data."""
    with store.tx() as s:
        return record_verification_in(s, target, passed, incident_id, threshold, reason, window_seconds=window_seconds,
                                      failure_rate=failure_rate, min_attempts=min_attempts)


def record_verification_in(s: Session, target: str, passed: bool, incident_id: int, threshold: int,
                           reason: str = "", *, window_seconds: float = 0.0, failure_rate: float = 1.0,
                           min_attempts: int = 1) -> dict[str, Any]:
    """:func:`record_verification` inside the caller's write transaction ``s`` (a session of
    :meth:`heald.store.Store.tx`), so that the verdict is counted in the same commit as what
    else the caller records (the attempt's outcome: both once, or neither)."""
    now = utcnow()
    lock(s, f"heald.breaker.{target}")
    row = s.get(CircuitBreakerRow, target, with_for_update=True)
    if row is None:
        row = CircuitBreakerRow(target=target, failures=0, opened_at=None, opened_reason=None, reset_at=None,
                                reset_by=None, updated_at=now)
        s.add(row)
    row.updated_at = now
    row.failures = 0 if passed else row.failures + 1
    row.recent = _window(row, now, window_seconds, passed)
    trip = _trip_reason(row, threshold, window_seconds, failure_rate, min_attempts)
    if row.opened_at is None and trip is not None:
        row.opened_at = now
        row.opened_reason = f"{trip}, the last: {reason[:300]}" if not passed else trip
        audit.append_later(s, actor="heald", event="breaker.opened", incident_id=incident_id,
                     reason=f"{target}: {row.opened_reason}; auto-remediation is off for it until a "
                            f"human resets it (heald breakers reset {target})",
                     details={"target": target, "failures": row.failures,
                              "window_failures": sum(1 for _, ok in row.recent or [] if not ok),
                              "window_attempts": len(row.recent or [])})
    s.flush()
    return _breaker_json(row)


def _window(row: CircuitBreakerRow, now: datetime, window_seconds: float, passed: bool) -> list[Any] | None:
    """The breaker's recent verdicts with this one, [[epoch seconds, passed], …]: only those of
    the last ``window_seconds`` and after the last reset (at most 10,000); None when off."""
    if window_seconds <= 0:
        return None
    since = now.timestamp() - window_seconds
    if row.reset_at is not None:
        since = max(since, row.reset_at.timestamp())
    kept = [[t, ok] for t, ok in (row.recent or []) if t >= since]
    return [*kept, [now.timestamp(), passed]][-10_000:]


def _trip_reason(row: CircuitBreakerRow, threshold: int, window_seconds: float, failure_rate: float,
                 min_attempts: int) -> str | None:
    """Why the breaker should open now (consecutive failures, or the failure rate of its
    window), or None."""
    if row.failures >= threshold:
        return f"{row.failures} failed verifications in a row"
    recent = row.recent or []
    failed = sum(1 for _, ok in recent if not ok)
    if window_seconds > 0 and len(recent) >= min_attempts and failed / len(recent) >= failure_rate:
        return (f"{failed} of the last {len(recent)} remedies verified within {format_duration(window_seconds)} "
                f"failed (failure rate {failed / len(recent):.0%}, the limit is {failure_rate:.0%})")
    return None


def breakers(store: Store) -> list[dict[str, Any]]:
    """Every target's breaker (open and closed), by target."""
    with store.read() as s:
        return [_breaker_json(r) for r in s.scalars(sa.select(CircuitBreakerRow).order_by(CircuitBreakerRow.target))]


def reset_breaker(store: Store, target: str, by: str, reason: str = "") -> dict[str, Any]:
    """Close ``target``'s breaker (auto-remediation on again) and clear its failure count, as
    ``by`` (an audit actor such as ``user:alice``). Raises NotFound for a target with no breaker."""
    now = utcnow()
    with store.tx() as s:
        lock(s, f"heald.breaker.{target}")
        row = s.get(CircuitBreakerRow, target, with_for_update=True)
        if row is None:
            raise NotFound(f"no circuit breaker for {target!r} (heald breakers list shows the known targets)")
        was_open = row.opened_at is not None
        row.failures, row.opened_at, row.opened_reason, row.recent = 0, None, None, None
        row.reset_at, row.reset_by, row.updated_at = now, by, now
        audit.append_later(s, actor=by, event="breaker.reset",
                     reason=f"{target}: " + (reason or ("auto-remediation is on again" if was_open
                                                        else "failure count cleared (it was closed)")),
                     details={"target": target, "was_open": was_open})
        s.flush()
        return _breaker_json(row)
