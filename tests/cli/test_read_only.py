"""Issue 19: read-only commands do not run the migrations (every CLI call did: 0.85 s); they
compare the schema's revision and ask for ``heald migrate`` when the database is behind, while
a command that writes still migrates."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from heald.store import MIGRATIONS, Store
from tests.conftest import run_heald

pytestmark = pytest.mark.slow  # real heald subprocesses


def revision(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rev = str(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar())
    engine.dispose()
    return rev


def test_read_only_commands_refuse_a_database_behind_and_do_not_migrate_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'heald.db'}"
    env = {"HEALD_STATE_DIR": str(tmp_path / "state"), "HEALD_CONFIG": ""}
    assert run_heald("incidents", env=env, cwd=tmp_path).returncode == 0  # a new database is created on first use
    store = Store(url)
    current, head = store.schema_revisions()
    assert current == head
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:  # a database an older heald left behind
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
    older = revision(url)
    store.close()
    assert older != head
    for args in (["incidents"], ["audit", "verify"], ["silences", "list"]):
        r = run_heald(*args, env=env, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "heald migrate" in r.stderr and older in r.stderr and head in r.stderr, r.stderr
        assert revision(url) == older, args  # nothing migrated it
    done = run_heald("migrate", env=env, cwd=tmp_path)
    assert done.returncode == 0 and revision(url) == head, done.stderr
    assert run_heald("incidents", env=env, cwd=tmp_path).returncode == 0


def test_a_command_that_writes_still_migrates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'heald.db'}"
    env = {"HEALD_STATE_DIR": str(tmp_path / "state"), "HEALD_CONFIG": ""}
    store = Store(url)
    store.migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "-1")
    _, head = store.schema_revisions()
    store.close()
    r = run_heald("silences", "add", 'service="a"', "--duration", "1h", "--comment", "w", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert revision(url) == head
