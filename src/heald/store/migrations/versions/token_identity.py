"""Token identities: the root identity (the human) each API token's identity counts as when
approvals are counted (issue 11 item 6: one person must not satisfy a two-approval rule).

Existing tokens are given a root from what was recorded about them: a token created from the
CLI (``created_by`` ``cli:<login>``, made on the database host) is a root of its own; one
created over the API (``user:<identity>``) counts as the root of the identity that created it;
an identity keeps the root of its first token.

Revision ID: token_identity
Revises: policy_budgets
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "token_identity"
down_revision = "policy_budgets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("root_identity", sa.String(200), nullable=True))
    conn = op.get_bind()
    tokens = sa.table("api_tokens", sa.column("id", sa.Integer()), sa.column("name", sa.String()),
                      sa.column("created_by", sa.String()), sa.column("root_identity", sa.String()))
    roots: dict[str, str] = {}
    for token_id, name, created_by in conn.execute(
            sa.select(tokens.c.id, tokens.c.name, tokens.c.created_by).order_by(tokens.c.id)).all():
        assert isinstance(name, str) and isinstance(created_by, str)  # NOT NULL columns
        if name not in roots:
            creator = created_by[len("user:"):] if created_by.startswith("user:") else None
            roots[name] = roots.get(creator, creator) if creator else name
        conn.execute(sa.update(tokens).where(tokens.c.id == token_id).values(root_identity=roots[name]))
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("root_identity", existing_type=sa.String(200), nullable=False)
        batch.create_index("ix_api_tokens_root_identity", ["root_identity"])


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_root_identity")
        batch.drop_column("root_identity")
