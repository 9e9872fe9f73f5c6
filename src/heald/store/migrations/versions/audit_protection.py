"""Protect the audit chain's head and refuse TRUNCATE (issue 11 item 7).

``audit_head`` may only be created once (pointing at entry 1) and then only move forward, one
entry at a time, to an entry that exists and chains to the old head; it can never be deleted.
On PostgreSQL, ``TRUNCATE`` (which bypasses row triggers) is refused on ``audit_log`` and
``audit_head`` by statement triggers. SQLite has no TRUNCATE: its ``DELETE`` without ``WHERE``
runs the row triggers.

Revision ID: audit_protection
Revises: token_identity
"""

from __future__ import annotations

from alembic import op

revision = "audit_protection"
down_revision = "token_identity"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = {
    "audit_head_no_delete": (
        "BEFORE DELETE ON audit_head "
        "BEGIN SELECT RAISE(ABORT, 'audit_head cannot be deleted: the audit chain is append-only'); END"),
    "audit_head_insert_once": (
        "BEFORE INSERT ON audit_head "
        "WHEN NEW.id <> 1 OR NEW.seq <> 1 OR EXISTS (SELECT 1 FROM audit_head) "
        "OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = 1 AND hash = NEW.hash) "
        "BEGIN SELECT RAISE(ABORT, 'audit_head is created once, pointing at entry 1'); END"),
    "audit_head_forward_only": (
        "BEFORE UPDATE ON audit_head "
        "WHEN NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1 "
        "OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash) "
        "BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward to the next entry of the chain'); END"),
}

_PG_HEAD_GUARD = """
CREATE FUNCTION heald_audit_head_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted: the audit chain is append-only';
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.id <> 1 OR NEW.seq <> 1 OR EXISTS (SELECT 1 FROM audit_head)
           OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = 1 AND hash = NEW.hash) THEN
            RAISE EXCEPTION 'audit_head is created once, pointing at entry 1';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1 OR NOT EXISTS (
        SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash) THEN
        RAISE EXCEPTION 'audit_head only moves forward to the next entry of the chain';
    END IF;
    RETURN NEW;
END; $$ LANGUAGE plpgsql
"""

_PG_NO_TRUNCATE = """
CREATE FUNCTION heald_audit_no_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: TRUNCATE is refused', TG_TABLE_NAME;
END; $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
        return
    op.execute(_PG_HEAD_GUARD)
    op.execute("CREATE TRIGGER audit_head_guard BEFORE INSERT OR UPDATE OR DELETE ON audit_head "
               "FOR EACH ROW EXECUTE FUNCTION heald_audit_head_guard()")
    op.execute(_PG_NO_TRUNCATE)
    for table in ("audit_log", "audit_head"):
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION heald_audit_no_truncate()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        return
    for table in ("audit_log", "audit_head"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    op.execute("DROP FUNCTION IF EXISTS heald_audit_no_truncate()")
    op.execute("DROP TRIGGER IF EXISTS audit_head_guard ON audit_head")
    op.execute("DROP FUNCTION IF EXISTS heald_audit_head_guard()")
