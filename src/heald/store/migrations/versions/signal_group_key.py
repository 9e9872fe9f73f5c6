"""Signals remember the grouping key they were correlated under (one Alertmanager notification
group, one incident, even when the group joined an incident opened by another signal).

Revision ID: signal_group_key
Revises: breaker_window
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "signal_group_key"
down_revision = "breaker_window"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signals") as batch:
        batch.add_column(sa.Column("group_key", sa.String(128), nullable=True))
    op.create_index("ix_signals_group_key", "signals", ["group_key"])


def downgrade() -> None:
    op.drop_index("ix_signals_group_key", "signals")
    with op.batch_alter_table("signals") as batch:
        batch.drop_column("group_key")
