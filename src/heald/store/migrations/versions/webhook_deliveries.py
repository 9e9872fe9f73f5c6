"""Webhook deliveries already received, by source and delivery id, so a redelivery is dropped.

Revision ID: webhook_deliveries
Revises: llm_usage
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from heald.store.tables import UTCDateTime

revision = "webhook_deliveries"
down_revision = "llm_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("source", sa.String(100), primary_key=True),
        sa.Column("delivery_id", sa.String(200), primary_key=True),
        sa.Column("signal_ids", sa.JSON, nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
