"""The kill switch: pause and resume every automatic action of heald at once.

While heald is paused, incidents are still opened, diagnosed and planned, and the gate still
decides; but a decision to act (``auto``, or one needing an approval) becomes a wait
(:func:`heald.engine.steps.decide`), and a remedy decided before the pause is not applied after
it (:func:`heald.engine.steps.act` checks again right before acting). The healing waits for a
**resume**, not for a human approval: a pause is an operator's statement about the whole
system ("do not touch anything now"), which an approval of one incident must not override; so
resuming is the one explicit way back, and the waiting incidents then go on by themselves
(bounded by ``healing.blocked_wait_max_seconds``, after which they are handed over to a human).

The state is one database row (:class:`heald.store.tables.PauseRow`), so every worker on a
shared PostgreSQL sees the same switch; each pause and resume is audited with its actor
(``heald.paused``, ``heald.resumed``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from heald.models import utcnow
from heald.store import Store, audit
from heald.store.db import lock
from heald.store.tables import PauseRow

MAX_REASON = 2000


@dataclass(frozen=True)
class PauseState:
    """Whether heald is paused, why (``reason``), by whom (``actor``, an audit actor such as
    ``user:alice``) and since when (``since``, ISO 8601 UTC; None: never paused)."""

    paused: bool
    reason: str = ""
    actor: str = ""
    since: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a human: ``heald is paused by user:alice since …: reason``."""
        if not self.paused:
            return "heald is not paused: it acts by its policy"
        return f"heald is paused by {self.actor} since {self.since}: {self.reason}"


def state(store: Store) -> PauseState:
    """The switch as it is now (not paused when it was never set)."""
    with store.read() as s:
        row = s.scalar(sa.select(PauseRow).where(PauseRow.id == 1))
        return _state(row)


def _state(row: PauseRow | None) -> PauseState:
    if row is None:
        return PauseState(False)
    return PauseState(row.paused, row.reason, row.actor, row.changed_at.isoformat())


def pause(store: Store, actor: str, reason: str) -> PauseState:
    """Pause every automatic action, as ``actor``, for ``reason`` (required, at most 2000
    characters). Pausing again while paused updates the reason and is audited again. Raises
    ValueError naming the field for a missing or too long reason."""
    text = _reason(reason, required=True)
    return _set(store, True, actor, text, "heald.paused",
                f"every automatic action is paused: {text}")


def resume(store: Store, actor: str, reason: str = "") -> PauseState:
    """Resume automatic actions, as ``actor`` (``reason`` optional). Raises ValueError when
    heald is not paused (nothing to resume) or the reason is too long."""
    text = _reason(reason, required=False)
    return _set(store, False, actor, text, "heald.resumed",
                "automatic actions resumed" + (f": {text}" if text else ""))


def _reason(reason: str, *, required: bool) -> str:
    text = reason.strip()
    if required and not text:
        raise ValueError("reason: required to pause heald (say why, e.g. 'deploy freeze')")
    if len(text) > MAX_REASON:
        raise ValueError(f"reason: at most {MAX_REASON} characters, got {len(text)}")
    return text


def _set(store: Store, paused: bool, actor: str, reason: str, event: str, audit_reason: str) -> PauseState:
    def work(s: Any) -> PauseState:
        lock(s, "heald.pause")
        row = s.get(PauseRow, 1, with_for_update=True)
        if not paused and (row is None or not row.paused):
            raise ValueError("heald is not paused: there is nothing to resume")
        now = utcnow()
        if row is None:
            row = PauseRow(id=1, paused=paused, reason=reason, actor=actor, changed_at=now)
            s.add(row)
        else:
            row.paused, row.reason, row.actor, row.changed_at = paused, reason, actor, now
        audit.append(s, actor=actor, event=event, reason=audit_reason, details={"paused": paused, "reason": reason})
        s.flush()
        return _state(row)
    return store.transact(work)
