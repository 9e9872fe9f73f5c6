"""Webhook redeliveries: a sender that retries (or a human pressing "Redeliver" in GitHub's
settings) sends the same delivery id again; its signals must not be stored twice.

:func:`ingest_delivery` stores a delivery's signals in one transaction or, for a big delivery,
in several (chunks), and remembers with the delivery id how many of them are stored. A
redelivery of a delivery stored whole is dropped; one of a delivery stored in part (a later
chunk failed) stores only the signals still missing, so every signal is stored exactly once.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from heald.config import HealdConfig
from heald.correlate import IngestResult, ingest_all
from heald.models import Signal, utcnow
from heald.store.db import lock
from heald.store.tables import WebhookDeliveryRow


def ingest_delivery(session: Session, source: str, delivery_id: str, signals: list[Signal], config: HealdConfig,
                    actor: str | None = None, limit: int | None = None) -> list[IngestResult] | None:
    """Ingest, in the caller's transaction, the next ``limit`` (None: all) signals of delivery
    ``delivery_id`` from ``source`` not stored yet, and remember how many are stored. Returns
    their results (an empty list for a first delivery without signals), or None, storing
    nothing, when every signal of that delivery is stored already. A redelivery carries the
    same signals in the same order (the sender sends the same payload), so "the next" are the
    ones after those stored before."""
    lock(session, f"heald.delivery.{source}.{delivery_id}")
    row = session.get(WebhookDeliveryRow, (source, delivery_id))
    stored = len(row.signal_ids) if row is not None else 0
    if row is not None and stored >= len(signals):
        return None
    chunk = signals[stored:] if limit is None else signals[stored:stored + limit]
    results = ingest_all(session, chunk, config, actor=actor)
    ids = [r.signal_id for r in results]
    if row is None:
        session.add(WebhookDeliveryRow(source=source, delivery_id=delivery_id, signal_ids=ids, received_at=utcnow()))
    else:
        row.signal_ids = [*row.signal_ids, *ids]
    session.flush()
    return results
