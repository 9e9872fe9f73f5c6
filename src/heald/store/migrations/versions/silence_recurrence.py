"""Recurring maintenance windows: a silence may carry a cron schedule, the length of each
window and the schedule's time zone (issue 17, "Recurring maintenance windows for silences").
NULL for a silence of one window, as every silence stored before.

Revision ID: silence_recurrence
Revises: heald_pause
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "silence_recurrence"
down_revision = "heald_pause"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("silences") as batch:
        batch.add_column(sa.Column("recurrence", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("silences") as batch:
        batch.drop_column("recurrence")
