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


def test_token_identity_gives_existing_tokens_their_root(db_url: str) -> None:
    """Migration ``token_identity`` on a database with tokens: a token made from the CLI is a
    root; one made over the API counts as the root of its maker, through a chain."""
    import sqlalchemy as sa
    from alembic import command

    store = Store(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "policy_budgets")
        for i, (name, by) in enumerate([("alice", "cli:root"), ("bob2", "user:alice"), ("carl2", "user:bob2"),
                                        ("dave", "cli:root"), ("alice", "user:dave"), ("eve", "user:anonymous")]):
            conn.execute(sa.text("INSERT INTO api_tokens (name, role, token_hash, prefix, created_by, created_at) "
                                 "VALUES (:n, 'approver', :h, 'heald_x', :b, CURRENT_TIMESTAMP)"),
                         {"n": name, "h": f"{i:064d}", "b": by})
    store.migrate()
    roots = [(t.name, t.root_identity) for t in store.list_tokens()]
    assert roots == [("alice", "alice"), ("bob2", "alice"), ("carl2", "alice"), ("dave", "dave"), ("alice", "alice"),
                     ("eve", "anonymous")]
    store.close()


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
