"""Several workers on one database (issue 14): the workers with their heartbeats, and the
leases that give each probe and log tailer to exactly one live worker.

Revision ID: cluster_workers
Revises: growth_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cluster_workers"
down_revision = "growth_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heald_workers",
        sa.Column("executor_id", sa.String(100), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("api_url", sa.String(500), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("leader", sa.Boolean, nullable=False),
        sa.Column("recovered_by", sa.String(100), nullable=True),
        sa.Column("recovered_at", sa.Float, nullable=True),
        sa.Column("recovered_workflows", sa.Integer, nullable=False),
    )
    op.create_table(
        "heald_leases",
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column("executor_id", sa.String(100), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("heald_leases")
    op.drop_table("heald_workers")
