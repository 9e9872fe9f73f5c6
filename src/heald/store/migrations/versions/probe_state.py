"""Probe state survives a restart of heald (issue 12 item 8): one row per (service, probe)
with its failure/success streak, whether its signal is firing and that signal's fingerprint.

Revision ID: probe_state
Revises: audit_protection
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from heald.store.tables import UTCDateTime

revision = "probe_state"
down_revision = "audit_protection"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "probe_state",
        sa.Column("service", sa.String(200), primary_key=True),
        sa.Column("probe", sa.String(500), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("successes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("firing", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("first_failure", UTCDateTime(), nullable=True),
        sa.Column("fingerprint", sa.String(200), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("probe_state")
