"""Issue 11 item 10: what heald keeps for itself is readable by its owner only, whatever the
umask (the tests set 022, under which files would otherwise be created 0644 and dirs 0755)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from heald.store import Store
from tests.conftest import heald_cmd, make_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_cli_creates_a_private_state_dir_database_and_token_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = subprocess.run(heald_cmd("incidents", "--json"), capture_output=True, text=True, timeout=120, umask=0o022,
                           env={**os.environ, "HEALD_STATE_DIR": str(state)})
    assert first.returncode == 0, first.stderr
    assert (mode(state), mode(state / "heald.db")) == (0o700, 0o600)

    token_file = tmp_path / "admin.token"
    done = subprocess.run(heald_cmd("tokens", "create", "--role", "admin", "--name", "ops", "--output", str(token_file)),
                          capture_output=True, text=True, timeout=120, umask=0o022,
                          env={**os.environ, "HEALD_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "mode 0600" in done.stderr  # the token is not printed
    assert mode(state) == 0o700
    assert mode(state / "heald.db") == 0o600
    assert mode(token_file) == 0o600
    from heald.auth import lookup_token

    store = Store(f"sqlite:///{state / 'heald.db'}")
    record = lookup_token(store, token_file.read_text().strip())
    store.close()
    assert record is not None and record.name == "ops"  # the file holds the token itself

    again = subprocess.run(heald_cmd("tokens", "create", "--role", "viewer", "--output", str(token_file)),
                           capture_output=True, text=True, timeout=120, umask=0o022,
                           env={**os.environ, "HEALD_STATE_DIR": str(state)})
    assert again.returncode == 2 and "--output" in again.stderr and "exists" in again.stderr


def test_the_token_file_is_not_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    link = tmp_path / "token"
    link.symlink_to(target)
    done = subprocess.run(heald_cmd("tokens", "create", "--role", "viewer", "--output", str(link)),
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HEALD_STATE_DIR": str(tmp_path / "s")})
    assert done.returncode == 2 and "--output" in done.stderr
    assert target.read_text() == "keep me\n"


def test_the_database_and_its_wal_and_shm_are_0600(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "new" / "heald.db"
    store = Store(f"sqlite:///{db}")
    try:
        store.migrate()
        store.record(actor="test", event="test.event", reason="written through the WAL")
        with store.engine.connect():  # an open connection keeps -wal and -shm in place
            wal, shm = db.with_name("heald.db-wal"), db.with_name("heald.db-shm")
            assert wal.exists() and shm.exists()
            assert (mode(db.parent), mode(db), mode(wal), mode(shm)) == (0o700, 0o600, 0o600, 0o600)
    finally:
        store.close()


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path, umask_022: None) -> None:
    db = tmp_path / "heald.db"
    Store(f"sqlite:///{db}").migrate()
    db.chmod(0o644)
    Store(f"sqlite:///{db}").close()
    assert mode(db) == 0o600
    assert mode(tmp_path) == 0o700  # pytest's own; an existing parent is never changed by heald


def test_runtime_state_files_are_private(tmp_path: Path, umask_022: None, start_runtime) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "ci-work"
    cfg = make_config(tmp_path, ci={"work_dir": str(work)},
                      services={"svc": {"command": ["sleep", "30"]}})
    rt = start_runtime(cfg, run_probes=False, tail_logs=False)
    rt.stop(stop_services=True)
    state = cfg.state_dir
    assert mode(state) == 0o700
    for name in ("heald.db", "dbos.sqlite", "audit-checkpoint.key", "audit-checkpoints.jsonl"):
        assert mode(state / name) == 0o600, name
    assert mode(state / "services") == 0o700


def test_state_dir_is_traversable_only_when_root_keeps_ci_work_trees_in_it(tmp_path: Path, umask_022: None,
                                                                            start_runtime) -> None:  # type: ignore[no-untyped-def]
    """As root the sandbox runs as an unprivileged user that must reach ``<state_dir>/ci``:
    then the state dir is 0711 (traverse, not list); its files stay 0600."""
    cfg = make_config(tmp_path)
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.stop()
    assert mode(cfg.state_dir) == (0o711 if os.geteuid() == 0 else 0o700)
    assert mode(cfg.state_dir / "heald.db") == 0o600
