"""Webhook redeliveries: a sender that retries (or a human pressing "Redeliver" in GitHub's
settings) sends the same delivery id again; its signals must not be stored twice.

:func:`ingest_delivery` stores a delivery's signals and its id in one transaction, so a
delivery is either wholly accepted (and any later copy dropped) or not at all.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from heald.config import HealdConfig
from heald.correlate import IngestResult, ingest
from heald.models import Signal, utcnow
from heald.store.db import lock
from heald.store.tables import WebhookDeliveryRow


def ingest_delivery(session: Session, source: str, delivery_id: str, signals: list[Signal], config: HealdConfig,
                    actor: str | None = None) -> list[IngestResult] | None:
    """Ingest the ``signals`` of delivery ``delivery_id`` from ``source`` in the caller's
    transaction, and remember the delivery. Returns None, storing nothing, when that delivery
    was accepted before."""
    lock(session, f"heald.delivery.{source}.{delivery_id}")
    if session.get(WebhookDeliveryRow, (source, delivery_id)) is not None:
        return None
    results = [ingest(session, s, config, actor=actor) for s in signals]
    session.add(WebhookDeliveryRow(source=source, delivery_id=delivery_id, signal_ids=[r.signal_id for r in results],
                                   received_at=utcnow()))
    session.flush()
    return results
