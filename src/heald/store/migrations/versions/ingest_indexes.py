"""The incidents of a fingerprint (and of a grouping key) are found through an index on
(fingerprint, incident_id) and (group_key, incident_id): correlation finds the open incident of
a signal's fingerprint by seeking the newest incident that holds it instead of reading every
signal of the fingerprint's history (45 ms per signal at 100k, inside the write lock).

Revision ID: ingest_indexes
Revises: cluster_workers
"""

from __future__ import annotations

from alembic import op

revision = "ingest_indexes"
down_revision = "cluster_workers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_signals_fingerprint_incident", "signals", ["fingerprint", "incident_id"])
    op.create_index("ix_signals_group_key_incident", "signals", ["group_key", "incident_id"])


def downgrade() -> None:
    op.drop_index("ix_signals_group_key_incident", "signals")
    op.drop_index("ix_signals_fingerprint_incident", "signals")
