"""The migrations are one linear history and produce exactly the schema the mappings describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from heald.store import MIGRATIONS, Store
from heald.store.tables import Base


def test_single_head() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert len(heads) == 1, f"migrations have several heads {heads}: chain new ones onto the latest"


def test_schema_matches_the_mappings(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_audit_protection_downgrades_and_upgrades(store: Store) -> None:
    """The head's guard and the TRUNCATE refusal come and go with their migration."""
    import pytest
    import sqlalchemy as sa
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    store.record(actor="test", event="test.event", reason="one")
    store.record(actor="test", event="test.event", reason="two")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    move_back = "UPDATE audit_head SET seq = 1, hash = (SELECT hash FROM audit_log WHERE seq = 1)"
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "audit_protection-1")
    with store.engine.begin() as conn:
        conn.execute(sa.text(move_back))
        conn.execute(sa.text("UPDATE audit_head SET seq = 2, hash = (SELECT hash FROM audit_log WHERE seq = 2)"))
    store.migrate()
    with pytest.raises(DBAPIError, match="audit_head only moves forward"):
        with store.engine.begin() as conn:
            conn.execute(sa.text(move_back))
    assert store.verify_audit().intact
