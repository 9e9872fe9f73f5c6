"""A circuit breaker keeps the verdicts of its recent window (``circuit_breakers.recent``), so
it opens on a failure rate as well as on consecutive failures (issue 12 item 8).

Revision ID: breaker_window
Revises: probe_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "breaker_window"
down_revision = "probe_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("circuit_breakers") as batch:
        batch.add_column(sa.Column("recent", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("circuit_breakers") as batch:
        batch.drop_column("recent")
