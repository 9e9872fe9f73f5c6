"""API tokens with roles, stored hashed (issue 6: authentication and authorization).

Revision ID: api_tokens
Revises: webhook_deliveries
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from heald.store.tables import UTCDateTime

revision = "api_tokens"
down_revision = "webhook_deliveries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("revoked_at", UTCDateTime()),
        sa.Column("revoked_by", sa.String(200)),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
