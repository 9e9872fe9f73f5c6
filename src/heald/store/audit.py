"""The tamper-evident audit log: an append-only hash chain.

Entry ``n`` stores ``hash_n = sha256(canonical_json(seq, ts, actor, event, incident_id, reason,
details) ‖ hash_{n-1})`` and ``prev_hash = hash_{n-1}``; the first entry chains to
:data:`GENESIS`. Sequence numbers are dense (1, 2, 3, …), and ``audit_head`` holds the newest
(seq, hash), so an entry altered, removed from the middle or cut from the end is detected by
:func:`verify`. The database refuses UPDATE, DELETE and TRUNCATE on ``audit_log``, and lets
``audit_head`` only move forward to the next entry (triggers from the migrations ``0001`` and
``audit_protection``); the chain catches whoever drops the triggers first, and signed
checkpoints kept outside the database (:mod:`heald.store.checkpoints`) catch whoever also
rewrites the rows and recomputes every hash.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald.models import AuditEntry, utcnow
from heald.store.db import WRITER_LOCK, lock
from heald.store.tables import ApiTokenRow, AuditHeadRow, AuditRow, IncidentRow

GENESIS = "0" * 64
_LOCK = WRITER_LOCK  # the chain is what serializes writers (heald.store.db)


def _canonical(value: Any) -> Any:
    """JSON-normalize ``value`` (datetimes and other objects become strings) so the stored
    details hash the same after a round trip through the database."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def entry_hash(seq: int, ts_iso: str, actor: str, event: str, incident_id: int | None,
               reason: str, details: dict[str, Any], prev_hash: str) -> str:
    """The chain hash of one entry (hex sha256); see the module docstring."""
    body = json.dumps(
        {"seq": seq, "ts": ts_iso, "actor": actor, "event": event, "incident_id": incident_id,
         "reason": reason, "details": details},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256((body + prev_hash).encode()).hexdigest()


def append(session: Session, *, actor: str, event: str, reason: str = "",
           incident_id: int | None = None, details: dict[str, Any] | None = None) -> AuditEntry:
    """Append one entry inside the caller's transaction (it commits with the change it records).

    ``actor`` is who acted (``heald``, ``probe``, ``user:alice``); ``event`` a dotted name
    (``incident.transition``, ``action.applied``). Writers are serialized by the writer lock
    (:mod:`heald.store.db`), which the session took before its first write. The entry's (seq,
    hash) is kept in ``session.info["heald.audit.last"]`` so a commit whose answer was lost can
    be confirmed (:func:`committed`). Inside a :func:`batched` block, the entries buffered
    there are appended first (the chain keeps the order of the calls).

    Cost: two statements (the entry's insert, the head's move), plus one read of the head for
    the transaction's first entry (the transaction then knows it: :func:`_head`).
    """
    lock(session, _LOCK)
    pending: list[dict[str, Any]] | None = session.info.get(_PENDING)
    if pending:  # entries buffered before this one come first
        _append_all(session, pending)
        pending.clear()
    session.flush()  # what the entry records (an incident it names) is written before it
    seq, prev = _head(session)
    seq += 1
    ts = utcnow()
    clean = _canonical(details or {})
    digest = entry_hash(seq, ts.isoformat(), actor, event, incident_id, reason, clean, prev)
    values = {"seq": seq, "ts": ts, "actor": actor, "event": event, "incident_id": incident_id, "reason": reason,
              "details": clean, "prev_hash": prev, "hash": digest}
    session.execute(_AUDIT.insert(), values)  # the entry exists before the head moves to it (the head's trigger checks that)
    _move_head(session, [{"seq": seq, "hash": digest}], new=seq == 1)
    return AuditEntry(**values)


_AUDIT: sa.Table = AuditRow.__table__  # type: ignore[assignment]  # a declarative class's Table
_HEAD_TABLE: sa.Table = AuditHeadRow.__table__  # type: ignore[assignment]
_HEAD = "heald.audit.head"


def _head(session: Session) -> tuple[int, str]:
    """(seq, hash) of the chain's newest entry as ``session``'s transaction sees it ((0,
    :data:`GENESIS`) for an empty log): read once per transaction (under the writer lock, which
    the caller holds), then kept in ``session.info`` and moved by :func:`_move_head`."""
    tx = session.get_transaction()
    cached: tuple[Any, int, str] | None = session.info.get(_HEAD)
    if cached is not None and cached[0] is tx:
        return cached[1], cached[2]
    row = session.execute(sa.select(_HEAD_TABLE.c.seq, _HEAD_TABLE.c.hash).where(_HEAD_TABLE.c.id == 1)).first()
    return (int(row[0]), str(row[1])) if row is not None else (0, GENESIS)


def _move_head(session: Session, moves: list[dict[str, Any]], *, new: bool) -> None:
    """Move the head to each of ``moves`` ({seq, hash}, in order: its trigger lets it move to the
    next entry only) — creating it at the first when the log was empty (``new``) — and remember
    the newest for the transaction (:func:`_head`) and for :func:`committed`."""
    newest = (moves[-1]["seq"], moves[-1]["hash"])
    if new:
        session.execute(_HEAD_TABLE.insert(), {"id": 1, **moves[0]})
        moves = moves[1:]
    if moves:
        session.execute(_HEAD_TABLE.update().where(_HEAD_TABLE.c.id == 1)
                        .values(seq=sa.bindparam("seq"), hash=sa.bindparam("hash")), moves)
    session.info[_HEAD] = (session.get_transaction(), *newest)
    session.info[LAST_ENTRY] = newest
    held = session.identity_map.get(session.identity_key(AuditHeadRow, 1))
    if held is not None:  # an ORM copy of the head loaded in this session is stale now
        session.expire(held)


LAST_ENTRY = "heald.audit.last"
_PENDING = "heald.audit.pending"


@contextmanager
def batched(session: Session) -> Iterator[None]:
    """Within it, :func:`append_later` buffers the entries of ``session``'s transaction; at the
    end (no exception) they are appended in the order given, all at once: one read of the head,
    one multi-row insert, the head moved entry by entry in one statement batch (its trigger
    lets it move to the next entry only). The chain is the same as with one :func:`append`
    each, at a fraction of the cost (an ingested message's signals, :mod:`heald.correlate`)."""
    if session.info.get(_PENDING) is not None:  # nested: the outer one writes
        yield
        return
    pending: list[dict[str, Any]] = []
    session.info[_PENDING] = pending
    try:
        yield
    finally:
        session.info.pop(_PENDING, None)
    if pending:
        _append_all(session, pending)


def buffering(session: Session) -> bool:
    """Whether ``session`` is inside a :func:`batched` block (:func:`append_later` buffers)."""
    return session.info.get(_PENDING) is not None


def append_later(session: Session, *, actor: str, event: str, reason: str = "", incident_id: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
    """:func:`append`, buffered until the end of the :func:`batched` block ``session`` is in (at
    once outside one)."""
    pending: list[dict[str, Any]] | None = session.info.get(_PENDING)
    if pending is None:
        append(session, actor=actor, event=event, reason=reason, incident_id=incident_id, details=details)
        return
    pending.append({"actor": actor, "event": event, "reason": reason, "incident_id": incident_id,
                    "details": _canonical(details or {})})


def _append_all(session: Session, entries: list[dict[str, Any]]) -> None:
    """Append ``entries`` (dicts of :func:`append`'s arguments, details canonical) in order."""
    lock(session, _LOCK)
    session.flush()  # what the entries record is written before them
    seq, prev = _head(session)
    new = seq == 0
    ts = utcnow()
    rows = []
    for e in entries:
        seq += 1
        digest = entry_hash(seq, ts.isoformat(), e["actor"], e["event"], e["incident_id"], e["reason"], e["details"],
                            prev)
        rows.append({**e, "seq": seq, "ts": ts, "prev_hash": prev, "hash": digest})
        prev = digest
    session.execute(_AUDIT.insert(), rows)
    _move_head(session, [{"seq": r["seq"], "hash": r["hash"]} for r in rows], new=new)


def committed(session: Session, entry: tuple[int, str]) -> bool:
    """Whether audit entry ``entry`` = (seq, hash) is in the log: after a commit whose answer
    was lost (the connection dropped), True means the transaction that appended it committed.
    The hash chains the previous entry and the time, so no other transaction's entry has it."""
    return session.scalar(sa.select(AuditRow.hash).where(AuditRow.seq == entry[0])) == entry[1]


def to_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(seq=row.seq, ts=row.ts, actor=row.actor, event=row.event,
                      incident_id=row.incident_id, reason=row.reason, details=row.details,
                      prev_hash=row.prev_hash, hash=row.hash)


@dataclass
class AuditReport:
    """The result of :func:`verify`. When ``intact`` is false, ``first_bad_seq`` is the first
    entry that was altered or removed and ``problem`` says which and how it shows.
    ``checkpoints`` is how many signed checkpoints the chain was compared with (None: none)."""

    intact: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_seq: int | None = None
    head_hash: str | None = None
    checkpoints: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"intact": self.intact, "entries": self.entries, "first_bad_seq": self.first_bad_seq,
                "problem": self.problem, "head_seq": self.head_seq, "head_hash": self.head_hash,
                "checkpoints": self.checkpoints}


@dataclass(frozen=True)
class Anchor:
    """An entry whose hash was recorded outside the database (a signed checkpoint): entry
    ``seq`` had hash ``hash``; ``label`` names the record in messages (``checkpoint 3 of
    2026-11-28T09:00:00Z``)."""

    seq: int
    hash: str
    label: str


def verify(session: Session, batch: int = 1000, anchors: Sequence[Anchor] = (), since: Anchor | None = None) -> AuditReport:
    """Walk the whole chain in order and report the first entry altered or removed.

    Besides the chain's own links and its head, an empty or shortened log is tampering when
    the store still holds what it recorded: an incident with no audit entry at all (every
    incident's opening is audited), or API tokens while the log is empty. ``anchors`` (from
    signed checkpoints kept outside the database, :mod:`heald.store.checkpoints`) catch a
    rewrite by someone with the whole database: each anchored entry must still exist with the
    same hash. ``since`` walks only from the entry it names on (that entry must still have its
    hash; ``entries`` then counts the entries walked): the cheap check before a periodic
    checkpoint of a long log. Memory stays bounded (rows are read ``batch`` at a time). Does
    not raise on tampering; the report says what was found.
    """
    by_seq = {a.seq: a for a in sorted([*anchors, *([since] if since else [])], key=lambda a: a.seq)}
    trusted = 0  # the newest entry whose hash matched an anchor
    expected_seq, prev, count = (since.seq, None, 0) if since else (1, GENESIS, 0)
    last_seq = expected_seq - 1
    stmt = sa.select(AuditRow).where(AuditRow.seq >= expected_seq).order_by(AuditRow.seq).execution_options(yield_per=batch)
    for row in session.scalars(stmt):
        count += 1
        if row.seq != expected_seq:
            return AuditReport(False, count, expected_seq,
                               f"entry {expected_seq} was removed (the chain jumps from {expected_seq - 1} to {row.seq})")
        if prev is not None and row.prev_hash != prev:
            return AuditReport(False, count, row.seq,
                               f"entry {row.seq} does not chain to entry {row.seq - 1} (prev_hash differs): "
                               f"entry {row.seq - 1} or {row.seq} was altered")
        digest = entry_hash(row.seq, row.ts.isoformat(), row.actor, row.event, row.incident_id,
                            row.reason, row.details, row.prev_hash)
        if digest != row.hash:
            return AuditReport(False, count, row.seq, f"entry {row.seq} was altered (its hash does not match its contents)")
        anchor = by_seq.get(row.seq)
        if anchor is not None:
            if anchor.hash != row.hash:
                return AuditReport(False, count, trusted + 1,
                                   f"entries {trusted + 1}..{row.seq} were rewritten: entry {row.seq} differs from "
                                   f"{anchor.label}, though the chain was recomputed to match", checkpoints=len(by_seq))
            trusted = row.seq
        prev, last_seq, expected_seq = row.hash, row.seq, row.seq + 1
    n_anchors = len(by_seq) if by_seq else None
    if by_seq and (newest := max(by_seq)) > last_seq:
        return AuditReport(False, count, last_seq + 1,
                           f"entries {last_seq + 1}..{newest} were removed: {by_seq[newest].label} signed entry "
                           f"{newest}, the log ends at {last_seq or 'nothing (it is empty)'}",
                           head_seq=last_seq or None, checkpoints=n_anchors)
    head = session.get(AuditHeadRow, 1)
    if head is not None and (head.seq != last_seq or head.hash != prev):
        if head.seq > last_seq:
            return AuditReport(False, count, last_seq + 1,
                               f"entries {last_seq + 1}..{head.seq} were removed from the end of the log",
                               head.seq, checkpoints=n_anchors)
        return AuditReport(False, count, head.seq, "the head of the chain does not match its last entry", head.seq,
                           checkpoints=n_anchors)
    if head is None and count:
        return AuditReport(False, count, 1, "the chain's head record is missing", checkpoints=n_anchors)
    if (problem := _history_without_entries(session, last_seq)) is not None:
        return AuditReport(False, count, last_seq + 1, problem, head_seq=last_seq or None, checkpoints=n_anchors)
    return AuditReport(True, count, head_seq=last_seq or None, head_hash=prev if last_seq else None,
                       checkpoints=n_anchors)


def _history_without_entries(session: Session, last_seq: int) -> str | None:
    """What the store holds that the log must have recorded but no longer does; None if
    nothing. Only cheap, indexed queries: the newest incident's entries and the tokens."""
    newest_incident = session.scalar(sa.select(sa.func.max(IncidentRow.id)))
    if newest_incident is not None and session.scalar(
            sa.select(AuditRow.seq).where(AuditRow.incident_id == newest_incident).limit(1)) is None:
        where = "the log is empty" if last_seq == 0 else f"the log ends at entry {last_seq}"
        return (f"incident {newest_incident} exists but no audit entry records it ({where}): the history after "
                f"entry {last_seq} was deleted")
    if last_seq == 0:
        tokens = session.scalar(sa.select(sa.func.count()).select_from(ApiTokenRow)) or 0
        if tokens:
            return f"the audit log is empty, but the store holds {tokens} API token(s) whose creation it recorded: it was deleted"
    return None


#: How often (seconds) :class:`ChainWatch` walks the whole chain again.
FULL_WALK_EVERY_S = 3600.0


@dataclass(frozen=True)
class ChainStatus:
    """What :meth:`ChainWatch.check` found. ``report`` is the walk of this check (its
    ``entries``: the entries read, ``head_seq``/``head_hash``: the newest entry when intact);
    ``verified_to`` the newest entry known good (0: none); ``since_seq`` the entry this walk
    started from (1: a full walk); ``full_at`` when a walk from entry 1 last passed (UTC)."""

    report: AuditReport
    verified_to: int
    since_seq: int
    full_at: datetime | None

    @property
    def intact(self) -> bool:
        return self.report.intact

    @property
    def full(self) -> bool:
        """Whether this check walked the whole chain."""
        return self.since_seq == 1


class ChainWatch:
    """Incremental verification of the chain for frequent views (the dashboard's audit page):
    a full walk (:func:`verify`) the first time and every ``full_every_s`` seconds; in
    between, a walk of only the entries after the newest one verified, starting from that
    entry, which must still have the hash it had (``since`` of :func:`verify`). The head, the
    end of the log and the store's records of history are checked at every walk.

    What a check between full walks does not see: a change to an entry older than the newest
    one verified before (other than that entry itself); the next full walk shows it, and so
    does ``heald audit verify`` at any time (with the signed checkpoints too). A broken chain
    is never remembered as good: each check walks again from the last good entry. Thread-safe
    (one walk at a time); the state is this process's memory."""

    def __init__(self, full_every_s: float = FULL_WALK_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utcnow):
        self.full_every_s = full_every_s
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._good: Anchor | None = None  # the newest entry verified
        self._full_t: float | None = None
        self._full_at: datetime | None = None

    def check(self, session: Session, *, full: bool = False) -> ChainStatus:
        """Verify the chain in ``session`` (see the class docstring); ``full`` forces a walk
        from entry 1. Does not raise on tampering."""
        with self._lock:
            t = self._clock()
            due = self._full_t is None or t - self._full_t >= self.full_every_s
            since = None if full or due or self._good is None else self._good
            report = verify(session, since=since)
            if report.intact:
                if since is None:
                    self._full_t, self._full_at = t, self._now()
                if report.head_seq:
                    self._good = Anchor(report.head_seq, report.head_hash or "", f"entry {report.head_seq}")
            return ChainStatus(report, self._good.seq if self._good and report.intact else 0,
                               since.seq if since else 1, self._full_at)

    def forget(self) -> None:
        """Drop what was verified: the next check walks the whole chain."""
        with self._lock:
            self._good, self._full_t, self._full_at = None, None, None
