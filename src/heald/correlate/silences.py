"""Silences and maintenance windows, as Alertmanager's (``silence/silence.go``): label matchers
(:mod:`heald.matchers`) plus a time window ``[starts_at, ends_at)``.

A firing signal whose labels match every matcher of a silence active at its arrival is stored
with ``suppressed_by = "silence N: …"`` and starts nothing (:func:`heald.correlate.ingest`). A
silence is created, listed and expired, never deleted: expiring sets ``ends_at`` to the moment
of expiry, and the history stays (``GET /v1/silences``, the audit log).

The labels a silence sees are the signal's labels plus ``service``, ``source`` and ``kind``
when the signal's labels do not carry them already.

A silence may recur (a maintenance window every Sunday at 02:00): its ``recurrence`` is a cron
schedule (five fields, or ``@daily``/``@weekly``…, evaluated by croniter in an IANA time zone)
and the length of each window. Such a silence is in effect only inside a window that began at
one of its schedule's times, and only between its ``starts_at`` and ``ends_at`` (the period the
schedule holds). :func:`in_effect` decides it from the silence and the instant alone (no
database, no clock), so a cache of active silences can call it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from croniter import CroniterBadDateError, croniter
from sqlalchemy.orm import Session

from heald.matchers import Matcher, matches_all, parse_matcher
from heald.models import Signal, utcnow
from heald.store import NotFound, Store, audit
from heald.store.tables import SilenceRow

STATES = ("pending", "active", "expired")
#: croniter's named schedules heald accepts besides five-field expressions.
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
#: Bounds of one window of a recurring silence, seconds (a minute to a week).
MIN_WINDOW_S, MAX_WINDOW_S = 60, 7 * 86400


class SilenceError(ValueError):
    """A silence heald refuses; ``field`` names the input at fault (``matchers``, ``ends_at``…)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def signal_labels(signal: Signal) -> dict[str, str]:
    """The labels silences and inhibition rules match a signal on (see the module docstring)."""
    extra = {"service": signal.service, "source": signal.source, "kind": signal.kind}
    return {**{k: v for k, v in extra.items() if v}, **{k: str(v) for k, v in signal.labels.items()}}


def parse_matchers(texts: list[str], field: str = "matchers") -> list[Matcher]:
    """Parse a silence's matchers. Raises SilenceError naming ``field[i]``: none given, one
    invalid, or all of them matching the empty string (which would silence every signal,
    refused as Alertmanager does)."""
    if not texts:
        raise SilenceError(field, "at least one matcher is required, e.g. service=\"shop\"")
    parsed = []
    for i, text in enumerate(texts):
        try:
            parsed.append(parse_matcher(text))
        except ValueError as exc:
            raise SilenceError(f"{field}[{i}]", str(exc)) from exc
    if all(m.matches({}) for m in parsed):
        raise SilenceError(field, "at least one matcher must not match the empty string (these would silence "
                                  "every signal)")
    return parsed


class SilenceLike(Protocol):
    """What :func:`in_effect` reads of a silence (a :class:`SilenceRow` or a cached copy)."""

    @property
    def starts_at(self) -> datetime: ...
    @property
    def ends_at(self) -> datetime: ...
    @property
    def recurrence(self) -> dict[str, Any] | None: ...


def parse_recurrence(schedule: str, window_seconds: float, timezone: str = "UTC") -> dict[str, Any]:
    """A recurring silence's ``recurrence`` (``{"schedule", "window_seconds", "timezone"}``)
    from a cron ``schedule`` (five fields ``minute hour day-of-month month day-of-week`` as
    crontab(5), or one of :data:`CRON_ALIASES`), the length of each window in seconds (60 s to
    7 days) and an IANA ``timezone`` (``Europe/Paris``) the schedule is read in. Raises
    SilenceError naming ``recurrence.schedule``, ``recurrence.window`` or ``recurrence.timezone``."""
    text = " ".join(schedule.split())
    if not (len(text.split(" ")) == 5 or text in CRON_ALIASES) or not croniter.is_valid(text):
        raise SilenceError("recurrence.schedule", f"expected a cron schedule of five fields (minute hour "
                                                  f"day-of-month month day-of-week, e.g. '0 2 * * 0') or one of "
                                                  f"{', '.join(CRON_ALIASES)}, got {schedule[:100]!r}")
    if not MIN_WINDOW_S <= window_seconds <= MAX_WINDOW_S:
        raise SilenceError("recurrence.window", f"each window lasts from 1m to 7d, got {window_seconds:g} s")
    try:
        zone = ZoneInfo(timezone.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise SilenceError("recurrence.timezone", f"expected an IANA time zone such as UTC or Europe/Paris, "
                                                  f"got {timezone[:100]!r}") from None
    try:
        croniter(text, datetime(2000, 1, 1, tzinfo=zone)).get_next(datetime)
    except CroniterBadDateError:
        raise SilenceError("recurrence.schedule", f"{text!r} never fires (e.g. the 30th of February)") from None
    return {"schedule": text, "window_seconds": int(window_seconds), "timezone": timezone.strip()}


def window_at(recurrence: Mapping[str, Any], now: datetime) -> tuple[datetime, datetime] | None:
    """The window of ``recurrence`` (see :func:`parse_recurrence`) that contains ``now``
    (timezone-aware) as ``(start, end)`` in UTC, or None between windows. The latest schedule
    time at or before ``now`` starts it: windows longer than the schedule's period overlap and
    the latest one ends last. Pure: same arguments, same answer."""
    zone = ZoneInfo(recurrence["timezone"])
    try:
        start = croniter(recurrence["schedule"], now.astimezone(zone) + timedelta(microseconds=1)).get_prev(datetime)
    except CroniterBadDateError:
        return None
    end = start + timedelta(seconds=recurrence["window_seconds"])
    return (start.astimezone(UTC), end.astimezone(UTC)) if start <= now < end else None


def next_window(recurrence: Mapping[str, Any], now: datetime) -> tuple[datetime, datetime] | None:
    """The window containing ``now``, else the next one to begin, as ``(start, end)`` in UTC
    (None when the schedule never fires again)."""
    if (current := window_at(recurrence, now)) is not None:
        return current
    try:
        start = croniter(recurrence["schedule"], now.astimezone(ZoneInfo(recurrence["timezone"]))).get_next(datetime)
    except CroniterBadDateError:
        return None
    return start.astimezone(UTC), (start + timedelta(seconds=recurrence["window_seconds"])).astimezone(UTC)


def in_effect(silence: SilenceLike, now: datetime) -> bool:
    """Whether ``silence`` silences signals at ``now`` (timezone-aware): inside
    ``[starts_at, ends_at)`` and, for a recurring one, inside one of its windows. Pure: it
    reads nothing but its arguments, so a cache of silences may call it for every signal.
    Naive ``starts_at``/``ends_at`` (as SQLite may hand them back) are read as UTC."""
    starts, ends = (t if t.tzinfo is not None else t.replace(tzinfo=UTC) for t in (silence.starts_at, silence.ends_at))
    if not starts <= now < ends:
        return False
    return silence.recurrence is None or window_at(silence.recurrence, now) is not None


def state_of(row: SilenceLike, now: datetime | None = None) -> str:
    """``expired`` (past ``ends_at``), ``active`` (:func:`in_effect`) or ``pending`` (not yet
    begun, or a recurring silence between two windows)."""
    now = now or utcnow()
    if row.ends_at <= now:
        return "expired"
    return "active" if in_effect(row, now) else "pending"


def silence_json(row: SilenceRow, now: datetime | None = None) -> dict[str, Any]:
    """A silence as JSON-ready data; a recurring one carries ``recurrence`` and ``next_window``
    (``{"starts_at", "ends_at"}`` of the window in effect or next, within the silence's period;
    None when no other window falls in it)."""
    now = now or utcnow()
    upcoming = None
    if row.recurrence is not None and row.ends_at > now:
        w = next_window(row.recurrence, max(now, row.starts_at))
        if w is not None and w[0] < row.ends_at:
            upcoming = {"starts_at": w[0].isoformat(), "ends_at": min(w[1], row.ends_at).isoformat()}
    return {"id": row.id, "matchers": list(row.matchers), "starts_at": row.starts_at.isoformat(),
            "ends_at": row.ends_at.isoformat(), "state": state_of(row, now), "comment": row.comment,
            "recurrence": dict(row.recurrence) if row.recurrence is not None else None, "next_window": upcoming,
            "created_by": row.created_by, "created_at": row.created_at.isoformat(),
            "expired_at": row.expired_at.isoformat() if row.expired_at else None, "expired_by": row.expired_by}


def create_silence(store: Store, matchers: list[str], ends_at: datetime, *, created_by: str, comment: str,
                   starts_at: datetime | None = None, recurrence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store a silence from ``starts_at`` (default now) to ``ends_at`` (timezone-aware) and audit
    it; returns it as JSON-ready data. ``recurrence`` (from :func:`parse_recurrence`) makes it
    a recurring maintenance window, in effect only inside its windows within that period.
    Raises SilenceError naming the field (see :func:`parse_matchers`; ``ends_at`` not after
    ``starts_at`` or already past; an empty ``comment``; a recurrence not checked again by
    :func:`parse_recurrence`)."""
    now = utcnow()
    parsed = parse_matchers(matchers)
    start = starts_at or now
    for name, value in (("starts_at", start), ("ends_at", ends_at)):
        if value.tzinfo is None:
            raise SilenceError(name, "give a time zone (e.g. 2025-01-01T10:00:00Z)")
    if ends_at <= start:
        raise SilenceError("ends_at", f"must be after starts_at ({start.isoformat()})")
    if ends_at <= now:
        raise SilenceError("ends_at", "is in the past: the silence would never be active")
    if not comment.strip():
        raise SilenceError("comment", "say why signals are silenced (who reads the history needs it)")
    if recurrence is not None:
        recurrence = parse_recurrence(str(recurrence.get("schedule", "")), float(recurrence.get("window_seconds", 0)),
                                      str(recurrence.get("timezone", "UTC")))
    every = (f", windows of {recurrence['window_seconds']} s at '{recurrence['schedule']}' "
             f"({recurrence['timezone']})" if recurrence else "")
    with store.tx() as s:
        row = SilenceRow(matchers=[str(m) for m in parsed], starts_at=start, ends_at=ends_at, comment=comment,
                         created_by=created_by, created_at=now, expired_at=None, expired_by=None,
                         recurrence=recurrence)
        s.add(row)
        s.flush()
        audit.append(s, actor=created_by, event="silence.created",
                     reason=f"silence {row.id} ({', '.join(row.matchers)}){every} until "
                            f"{ends_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC: {comment}",
                     details={"silence_id": row.id, "matchers": row.matchers, "starts_at": start.isoformat(),
                              "ends_at": ends_at.isoformat(), "recurrence": recurrence})
        created = silence_json(row, now)
    invalidate_silences()  # committed: this process's next signal sees it
    return created


#: The most silences one call of :func:`list_silences` gives.
MAX_LIST = 1000


def list_silences(store: Store, state: str | None = None, *, limit: int = MAX_LIST, before_id: int | None = None,
                  unexpired: bool = False) -> list[dict[str, Any]]:
    """Silences, newest first, at most ``limit`` (1..:data:`MAX_LIST`), those with an id below
    ``before_id`` only when given (the next page: the last id of this one); only those in
    ``state`` (pending, active, expired) when given, or not expired with ``unexpired``. Raises
    SilenceError naming ``state`` or ``limit``."""
    if state is not None and state not in STATES:
        raise SilenceError("state", f"expected one of {', '.join(STATES)}, got {state!r}")
    if not 1 <= limit <= MAX_LIST:
        raise SilenceError("limit", f"expected 1 to {MAX_LIST}, got {limit}")
    now = utcnow()
    stmt = sa.select(SilenceRow).order_by(SilenceRow.id.desc()).limit(limit)
    if state == "expired":
        stmt = stmt.where(SilenceRow.ends_at <= now)
    elif state == "active":
        stmt = stmt.where(SilenceRow.ends_at > now, SilenceRow.starts_at <= now)
    elif state == "pending":  # not begun, or a recurring one between two of its windows
        stmt = stmt.where(SilenceRow.ends_at > now)
    elif unexpired:
        stmt = stmt.where(SilenceRow.ends_at > now)
    out: list[dict[str, Any]] = []
    with store.read() as s:
        while len(out) < limit:  # a recurring silence's state is only known in Python (state_of)
            page = list(s.scalars(stmt if before_id is None else stmt.where(SilenceRow.id < before_id)))
            out += [silence_json(r, now) for r in page if state is None or state_of(r, now) == state]
            if len(page) < limit:
                break
            before_id = page[-1].id
    return out[:limit]


def expire_silence(store: Store, silence_id: int, by: str) -> dict[str, Any]:
    """End a silence now (it stays listed, expired); an expired one is left as it is. Raises
    NotFound."""
    now = utcnow()
    with store.tx() as s:
        row = s.get(SilenceRow, silence_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no silence {silence_id}")
        if state_of(row, now) != "expired":
            row.starts_at = min(row.starts_at, now)  # a pending silence expires before it began
            row.ends_at, row.expired_at, row.expired_by = now, now, by
            audit.append(s, actor=by, event="silence.expired", reason=f"silence {silence_id} expired",
                         details={"silence_id": silence_id, "matchers": row.matchers})
        expired = silence_json(row, now)
    invalidate_silences()
    return expired


@dataclass(frozen=True)
class Silence:
    """A silence as matched at intake: its id, matchers (as stored, and parsed), time window
    ``[starts_at, ends_at)`` (aware UTC) and comment. :func:`active_silence` evaluates the
    window at each signal's arrival."""

    id: int
    matchers: tuple[str, ...]
    parsed: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    comment: str
    recurrence: dict[str, Any] | None = None

    def active_at(self, now: datetime) -> bool:
        """Whether this silence silences signals at ``now`` (:func:`in_effect`: its period and,
        when recurring, one of its windows)."""
        return in_effect(self, now)


#: Seconds a process keeps its list of silences before reading it again: the longest a silence
#: created or expired by another process (the CLI, another heald) goes unseen. Those this
#: process creates or expires take effect at once (:func:`invalidate_silences`).
SILENCE_CACHE_SECONDS = 1.0


@dataclass
class _Cached:
    loaded: float  #: time.monotonic() of the read
    since: datetime  #: the silences that had ended by this time are left out
    silences: list[Silence]


_cache: dict[str, _Cached] = {}
_cache_lock = threading.Lock()
_generation = 0  # bumped by invalidate_silences(): a read begun before it is not kept


def invalidate_silences() -> None:
    """Forget the silences read so far (every database): the next signal reads them again."""
    global _generation
    with _cache_lock:
        _generation += 1
        _cache.clear()


def _silences(session: Session, now: datetime) -> list[Silence]:
    """The silences not yet ended (pending or active), oldest first: from this process's cache
    (:data:`SILENCE_CACHE_SECONDS`), else one query."""
    key = str(session.get_bind().engine.url)
    with _cache_lock:
        cached, generation = _cache.get(key), _generation
    clock = time.monotonic()
    if cached is not None and clock - cached.loaded < SILENCE_CACHE_SECONDS and now >= cached.since:
        return cached.silences
    rows = session.scalars(sa.select(SilenceRow).where(SilenceRow.ends_at > now).order_by(SilenceRow.id))
    loaded = [Silence(r.id, tuple(r.matchers), tuple(parse_matcher(m) for m in r.matchers), _aware(r.starts_at),
                      _aware(r.ends_at), r.comment, r.recurrence) for r in rows]
    with _cache_lock:
        if generation == _generation:
            _cache[key] = _Cached(clock, now, loaded)
    return loaded


def _aware(t: datetime) -> datetime:
    """A stored time as aware UTC (SQLite hands back naive datetimes)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def active_silence(session: Session, labels: dict[str, str], now: datetime | None = None) -> Silence | None:
    """The oldest silence active at ``now`` whose matchers all match ``labels``, or None. The
    silences come from a per-process cache (:func:`_silences`): no query per signal; each
    one's time window is evaluated at ``now``."""
    now = now or utcnow()
    for silence in _silences(session, now):
        if silence.active_at(now) and matches_all(list(silence.parsed), labels):
            return silence
    return None


def describe(row: SilenceRow | Silence) -> str:
    """``silence N: <matchers> until <time> (<comment>)``, the ``suppressed_by`` of a signal."""
    rec = getattr(row, "recurrence", None)
    every = f" (window at '{rec['schedule']}' {rec['timezone']})" if rec else ""
    return (f"silence {row.id}: {', '.join(row.matchers)}{every} until "
            f"{row.ends_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({row.comment})")[:500]
