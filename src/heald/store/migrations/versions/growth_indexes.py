"""Indexes for the queries that grow with heald's history (issue 19, growth): incidents closed
since a time (``closed_at``), an incident's signals and audit entries in order and by event, the
newest signal of each service, the audit log filtered by actor or event, healed outcomes by
time to recover (the median and histogram of time to recover), and the verdicts on a decision.
(The open incident of a fingerprint has its own index, from the ingest work.)

Revision ID: growth_indexes
Revises: silence_recurrence
"""

from __future__ import annotations

from alembic import op

revision = "growth_indexes"
down_revision = "silence_recurrence"
branch_labels = None
depends_on = None

#: (name, table, columns) of every index this migration adds.
INDEXES = [
    ("ix_incidents_closed_at", "incidents", ["closed_at"]),
    ("ix_signals_incident_id_id", "signals", ["incident_id", "id"]),
    ("ix_signals_service_id", "signals", ["service", "id"]),
    ("ix_audit_log_incident_id_event", "audit_log", ["incident_id", "event"]),
    ("ix_audit_log_actor", "audit_log", ["actor"]),
    ("ix_audit_log_event", "audit_log", ["event"]),
    ("ix_outcomes_result_time_to_recover_s", "outcomes", ["result", "time_to_recover_s"]),
    ("ix_approvals_decision_id", "approvals", ["decision_id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
