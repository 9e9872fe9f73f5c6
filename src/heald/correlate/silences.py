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

from datetime import datetime
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
        return silence_json(row, now)


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
    if before_id is not None:
        stmt = stmt.where(SilenceRow.id < before_id)
    if state == "expired":
        stmt = stmt.where(SilenceRow.ends_at <= now)
    elif state == "active":
        stmt = stmt.where(SilenceRow.ends_at > now, SilenceRow.starts_at <= now)
    elif state == "pending":
        stmt = stmt.where(SilenceRow.ends_at > now, SilenceRow.starts_at > now)
    elif unexpired:
        stmt = stmt.where(SilenceRow.ends_at > now)
    with store.read() as s:
        return [silence_json(r, now) for r in s.scalars(stmt)]


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
        return silence_json(row, now)


def active_silence(session: Session, labels: dict[str, str], now: datetime | None = None) -> SilenceRow | None:
    """The oldest silence active at ``now`` whose matchers all match ``labels``, or None."""
    now = now or utcnow()
    rows = session.scalars(sa.select(SilenceRow).where(SilenceRow.starts_at <= now, SilenceRow.ends_at > now)
                           .order_by(SilenceRow.id))
    for row in rows:
        if matches_all([parse_matcher(m) for m in row.matchers], labels):
            return row
    return None


def describe(row: SilenceRow) -> str:
    """``silence N: <matchers> until <time> (<comment>)``, the ``suppressed_by`` of a signal."""
    return (f"silence {row.id}: {', '.join(row.matchers)} until {row.ends_at:%Y-%m-%d %H:%M:%S} UTC"
            f" ({row.comment})")[:500]
