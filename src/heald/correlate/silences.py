"""Silences and maintenance windows, as Alertmanager's (``silence/silence.go``): label matchers
(:mod:`heald.matchers`) plus a time window ``[starts_at, ends_at)``.

A firing signal whose labels match every matcher of a silence active at its arrival is stored
with ``suppressed_by = "silence N: …"`` and starts nothing (:func:`heald.correlate.ingest`). A
silence is created, listed and expired, never deleted: expiring sets ``ends_at`` to the moment
of expiry, and the history stays (``GET /v1/silences``, the audit log).

The labels a silence sees are the signal's labels plus ``service``, ``source`` and ``kind``
when the signal's labels do not carry them already.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald.matchers import Matcher, matches_all, parse_matcher
from heald.models import Signal, utcnow
from heald.store import NotFound, Store, audit
from heald.store.tables import SilenceRow

STATES = ("pending", "active", "expired")


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


def state_of(row: SilenceRow, now: datetime | None = None) -> str:
    now = now or utcnow()
    if row.ends_at <= now:
        return "expired"
    return "pending" if row.starts_at > now else "active"


def silence_json(row: SilenceRow, now: datetime | None = None) -> dict[str, Any]:
    return {"id": row.id, "matchers": list(row.matchers), "starts_at": row.starts_at.isoformat(),
            "ends_at": row.ends_at.isoformat(), "state": state_of(row, now), "comment": row.comment,
            "created_by": row.created_by, "created_at": row.created_at.isoformat(),
            "expired_at": row.expired_at.isoformat() if row.expired_at else None, "expired_by": row.expired_by}


def create_silence(store: Store, matchers: list[str], ends_at: datetime, *, created_by: str, comment: str,
                   starts_at: datetime | None = None) -> dict[str, Any]:
    """Store a silence from ``starts_at`` (default now) to ``ends_at`` (timezone-aware) and audit
    it; returns it as JSON-ready data. Raises SilenceError naming the field (see
    :func:`parse_matchers`; ``ends_at`` not after ``starts_at`` or already past; an empty
    ``comment``)."""
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
    with store.tx() as s:
        row = SilenceRow(matchers=[str(m) for m in parsed], starts_at=start, ends_at=ends_at, comment=comment,
                         created_by=created_by, created_at=now, expired_at=None, expired_by=None)
        s.add(row)
        s.flush()
        audit.append(s, actor=created_by, event="silence.created",
                     reason=f"silence {row.id} ({', '.join(row.matchers)}) until {ends_at:%Y-%m-%d %H:%M:%S} UTC: {comment}",
                     details={"silence_id": row.id, "matchers": row.matchers, "starts_at": start.isoformat(),
                              "ends_at": ends_at.isoformat()})
        created = silence_json(row, now)
    invalidate_silences()  # committed: this process's next signal sees it
    return created


def list_silences(store: Store, state: str | None = None) -> list[dict[str, Any]]:
    """Silences, newest first, optionally only those in ``state`` (pending, active, expired)."""
    if state is not None and state not in STATES:
        raise SilenceError("state", f"expected one of {', '.join(STATES)}, got {state!r}")
    now = utcnow()
    with store.read() as s:
        rows = [silence_json(r, now) for r in s.scalars(sa.select(SilenceRow).order_by(SilenceRow.id.desc()))]
    return [r for r in rows if state is None or r["state"] == state]


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

    def active_at(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at


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
                      _aware(r.ends_at), r.comment) for r in rows]
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
    return (f"silence {row.id}: {', '.join(row.matchers)} until {row.ends_at:%Y-%m-%d %H:%M:%S} UTC"
            f" ({row.comment})")[:500]
