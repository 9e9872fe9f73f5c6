"""Policy budgets and silences: the target an action acts on, target leases, circuit breakers,
silences.

Revision ID: policy_budgets
Revises: ci_pull_requests
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from heald.store.tables import UTCDateTime

revision = "policy_budgets"
down_revision = "ci_pull_requests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.add_column(sa.Column("target", sa.String(500), nullable=True))
    op.create_index("ix_actions_target_started", "actions", ["target", "started_at"])
    op.create_index("ix_actions_started", "actions", ["started_at"])
    op.create_table(
        "target_leases",
        sa.Column("target", sa.String(500), primary_key=True),
        sa.Column("incident_id", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "circuit_breakers",
        sa.Column("target", sa.String(500), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=True),
        sa.Column("opened_reason", sa.Text, nullable=True),
        sa.Column("reset_at", UTCDateTime(), nullable=True),
        sa.Column("reset_by", sa.String(200), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "silences",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("matchers", sa.JSON, nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=False),
        sa.Column("ends_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expired_at", UTCDateTime(), nullable=True),
        sa.Column("expired_by", sa.String(200), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("silences")
    op.drop_table("circuit_breakers")
    op.drop_table("target_leases")
    op.drop_index("ix_actions_started", "actions")
    op.drop_index("ix_actions_target_started", "actions")
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("target")
