"""The kill switch: one row that says whether heald is paused, why, by whom and since when
(issue 17, "Pause"). In the database so that every worker on a shared PostgreSQL sees it.

Revision ID: heald_pause
Revises: signal_group_key
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "heald_pause"
down_revision = "signal_group_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heald_pause",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("changed_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("heald_pause")
