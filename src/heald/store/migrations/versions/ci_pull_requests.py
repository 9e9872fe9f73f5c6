"""The pull requests heald opened for CI failures: one per (repository, failure signature).

Revision ID: ci_pull_requests
Revises: api_tokens
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from heald.store.tables import UTCDateTime

revision = "ci_pull_requests"
down_revision = "api_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ci_pull_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("repo", sa.String(300), nullable=False),
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("branch", sa.String(300), nullable=False),
        sa.Column("base_branch", sa.String(300), nullable=False),
        sa.Column("sha", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=True),
        sa.Column("url", sa.String(1000), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("incident_id", sa.Integer, nullable=True, index=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("repo", "signature", name="uq_ci_pull_requests_repo_signature"),
    )
    op.create_index("ix_ci_pull_requests_repo_created", "ci_pull_requests", ["repo", "created_at"])


def downgrade() -> None:
    op.drop_table("ci_pull_requests")
