"""The tamper-evident audit log: an append-only hash chain.

Entry ``n`` stores ``hash_n = sha256(canonical_json(seq, ts, actor, event, incident_id, reason,
details) ‖ hash_{n-1})`` and ``prev_hash = hash_{n-1}``; the first entry chains to
:data:`GENESIS`. Sequence numbers are dense (1, 2, 3, …), and ``audit_head`` holds the newest
(seq, hash), so an entry altered, removed from the middle or cut from the end is detected by
:func:`verify`. The database refuses UPDATE and DELETE on ``audit_log`` (triggers from the
initial migration); the chain catches whoever drops the triggers first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald.models import AuditEntry, utcnow
from heald.store.db import lock
from heald.store.tables import AuditHeadRow, AuditRow

GENESIS = "0" * 64
_LOCK = "heald.audit"


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
    (``incident.transition``, ``action.applied``). Writers are serialized by a lock.
    """
    lock(session, _LOCK)
    head = session.get(AuditHeadRow, 1)
    seq = (head.seq if head else 0) + 1
    prev = head.hash if head else GENESIS
    ts = utcnow()
    clean = _canonical(details or {})
    digest = entry_hash(seq, ts.isoformat(), actor, event, incident_id, reason, clean, prev)
    row = AuditRow(seq=seq, ts=ts, actor=actor, event=event, incident_id=incident_id,
                   reason=reason, details=clean, prev_hash=prev, hash=digest)
    session.add(row)
    if head is None:
        session.add(AuditHeadRow(id=1, seq=seq, hash=digest))
    else:
        head.seq, head.hash = seq, digest
    session.flush()
    return to_entry(row)


def to_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(seq=row.seq, ts=row.ts, actor=row.actor, event=row.event,
                      incident_id=row.incident_id, reason=row.reason, details=row.details,
                      prev_hash=row.prev_hash, hash=row.hash)


@dataclass
class AuditReport:
    """The result of :func:`verify`. When ``intact`` is false, ``first_bad_seq`` is the first
    entry that was altered or removed and ``problem`` says which and how it shows."""

    intact: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"intact": self.intact, "entries": self.entries, "first_bad_seq": self.first_bad_seq,
                "problem": self.problem, "head_seq": self.head_seq}


def verify(session: Session, batch: int = 1000) -> AuditReport:
    """Walk the whole chain in order and report the first entry altered or removed.

    Memory stays bounded (rows are read ``batch`` at a time). Does not raise on tampering;
    the report says what was found.
    """
    expected_seq, prev, count = 1, GENESIS, 0
    last_seq = 0
    stmt = sa.select(AuditRow).order_by(AuditRow.seq).execution_options(yield_per=batch)
    for row in session.scalars(stmt):
        count += 1
        if row.seq != expected_seq:
            return AuditReport(False, count, expected_seq,
                               f"entry {expected_seq} was removed (the chain jumps from {expected_seq - 1} to {row.seq})")
        if row.prev_hash != prev:
            return AuditReport(False, count, row.seq,
                               f"entry {row.seq} does not chain to entry {row.seq - 1} (prev_hash differs): "
                               f"entry {row.seq - 1} or {row.seq} was altered")
        digest = entry_hash(row.seq, row.ts.isoformat(), row.actor, row.event, row.incident_id,
                            row.reason, row.details, row.prev_hash)
        if digest != row.hash:
            return AuditReport(False, count, row.seq, f"entry {row.seq} was altered (its hash does not match its contents)")
        prev, last_seq, expected_seq = row.hash, row.seq, row.seq + 1
    head = session.get(AuditHeadRow, 1)
    if head is not None and (head.seq != last_seq or head.hash != prev):
        if head.seq > last_seq:
            return AuditReport(False, count, last_seq + 1,
                               f"entries {last_seq + 1}..{head.seq} were removed from the end of the log",
                               head.seq)
        return AuditReport(False, count, head.seq, "the head of the chain does not match its last entry", head.seq)
    if head is None and count:
        return AuditReport(False, count, 1, "the chain's head record is missing")
    return AuditReport(True, count, head_seq=last_seq or None)
