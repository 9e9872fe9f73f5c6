"""Issue 11 item 7: the attacks on the audit chain, performed as the issue describes them.

Each attack runs raw SQL through a connection of its own (not heald's), on SQLite and on
PostgreSQL: moving ``audit_head`` back, deleting it, wiping the log (``TRUNCATE`` on
PostgreSQL), cutting the tail and moving the head back. Then the attacker with the whole
database, who drops every trigger and rewrites, cuts or empties the log and recomputes every
hash: only the signed checkpoints kept outside the database catch that one.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from heald import correlate
from heald.models import Signal
from heald.store import Store
from heald.store.audit import GENESIS, entry_hash
from heald.store.db import normalize_url
from tests.conftest import make_config, make_token


def fill(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.record(actor="test", event="test.event", reason=f"entry {i + 1}", details={"i": i})


@pytest.fixture
def attacker(store: Store) -> Iterator[sa.Engine]:
    """A connection of the attacker's own to heald's database (plain SQLAlchemy, no heald code)."""
    engine = sa.create_engine(normalize_url(store.url))
    yield engine
    engine.dispose()


def run(engine: sa.Engine, *statements: str) -> None:
    """Run ``statements`` in one transaction of the attacker's connection."""
    with engine.begin() as conn:
        for stmt in statements:
            conn.exec_driver_sql(stmt)


def drop_every_trigger(engine: sa.Engine) -> None:
    """The attacker with the whole database: every trigger on the audit tables goes."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                         "AND tbl_name IN ('audit_log', 'audit_head')").scalars().all()
            for name in names:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        else:
            rows = conn.exec_driver_sql("SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                        "WHERE NOT t.tgisinternal AND c.relname IN ('audit_log', 'audit_head')").all()
            for name, table in rows:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}" ON {table}')
    assert names if engine.dialect.name == "sqlite" else rows


def drop_append_only_triggers(engine: sa.Engine) -> None:
    """What the intruder of the existing tests does: drop the initial migration's triggers on
    ``audit_log`` (those that were there before issue 11)."""
    if engine.dialect.name == "sqlite":
        run(engine, "DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete")
    else:
        run(engine, "DROP TRIGGER audit_log_append_only ON audit_log")


def rechain(engine: sa.Engine, from_seq: int, edit: dict[int, str]) -> None:
    """Rewrite the reasons of the entries in ``edit`` and recompute every hash from
    ``from_seq`` on, and the head, so that the chain alone verifies."""
    from heald.store.tables import AuditRow

    table = AuditRow.__table__  # the schema is public: the attacker reads it typed, like heald
    with engine.begin() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.seq)).mappings().all()
        prev = GENESIS
        for r in rows:
            if r["seq"] >= from_seq:
                reason = edit.get(r["seq"], r["reason"])
                details, ts = r["details"], r["ts"].isoformat()
                digest = entry_hash(r["seq"], ts, r["actor"], r["event"], r["incident_id"], reason, details, prev)
                conn.execute(sa.text("UPDATE audit_log SET reason = :r, prev_hash = :p, hash = :h WHERE seq = :s"),
                             {"r": reason, "p": prev, "h": digest, "s": r["seq"]})
                prev = digest
            else:
                prev = r["hash"]
        conn.execute(sa.text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": rows[-1]["seq"], "h": prev})


def open_incident(store: Store, tmp_path: Path) -> int:
    cfg = make_config(tmp_path)
    with store.tx() as s:
        result = correlate.ingest(s, Signal(source="probe", service="shop", summary="shop is down",
                                            labels={"alertname": "ShopDown"}), cfg)
    assert result.incident_id is not None
    return result.incident_id


# -- attacks with raw SQL: the database refuses them ---------------------------------------------


def test_moving_the_head_back_is_refused(store: Store, attacker: sa.Engine) -> None:
    fill(store, 5)
    with pytest.raises(DBAPIError, match="audit_head only moves forward"):
        run(attacker, "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    with pytest.raises(DBAPIError, match="audit_head only moves forward"):
        run(attacker, "UPDATE audit_head SET seq = 6, hash = 'f' || substr(hash, 2)")
    report = store.verify_audit()
    assert report.intact and report.head_seq == 5


def test_deleting_the_head_is_refused(store: Store, attacker: sa.Engine) -> None:
    fill(store, 3)
    with pytest.raises(DBAPIError, match="audit_head cannot be deleted"):
        run(attacker, "DELETE FROM audit_head")
    with pytest.raises(DBAPIError, match="audit_head is created once"):
        run(attacker, "INSERT INTO audit_head (id, seq, hash) VALUES (2, 1, (SELECT hash FROM audit_log WHERE seq = 1))")
    assert store.verify_audit().intact


def test_wiping_the_log_is_refused(store: Store, attacker: sa.Engine) -> None:
    """The issue's attack from the CI sandbox: ``TRUNCATE audit_log; DELETE FROM audit_head``
    (TRUNCATE bypasses row triggers). SQLite has no TRUNCATE; its DELETE without WHERE runs
    the triggers."""
    fill(store, 4)
    if attacker.dialect.name == "postgresql":
        for stmt in ("TRUNCATE audit_log", "TRUNCATE audit_head", "TRUNCATE audit_log, audit_head",
                     "TRUNCATE audit_log CASCADE"):
            with pytest.raises(DBAPIError, match="TRUNCATE is refused"):
                run(attacker, stmt)
    with pytest.raises(DBAPIError, match="append-only"):
        run(attacker, "DELETE FROM audit_log")
    with pytest.raises(DBAPIError, match="audit_head cannot be deleted"):
        run(attacker, "DELETE FROM audit_head")
    report = store.verify_audit()
    assert report.intact and report.entries == 4


def test_cutting_the_tail_and_moving_the_head_back_is_refused(store: Store, attacker: sa.Engine) -> None:
    """The tail goes (on PostgreSQL by copying the rows to keep, TRUNCATE and copying them
    back, which the old row triggers let through; on SQLite after dropping the old triggers),
    then the head is moved back to the new last entry."""
    fill(store, 6)
    if attacker.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="TRUNCATE is refused"):
            run(attacker, "CREATE TEMP TABLE keep AS SELECT * FROM audit_log WHERE seq <= 3", "TRUNCATE audit_log",
                "INSERT INTO audit_log SELECT * FROM keep")
    else:
        drop_append_only_triggers(attacker)
        run(attacker, "DELETE FROM audit_log WHERE seq > 3")
    with pytest.raises(DBAPIError, match="audit_head only moves forward"):
        run(attacker, "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    report = store.verify_audit()
    if attacker.dialect.name == "postgresql":
        assert report.intact and report.entries == 6
    else:
        assert not report.intact and report.first_bad_seq == 4 and "removed" in report.problem


# -- the attacker with the whole database, without checkpoints ------------------------------------


def test_an_empty_log_after_recorded_history_is_tampering(store: Store, attacker: sa.Engine, tmp_path: Path) -> None:
    """Everything deleted, head too, after dropping every trigger: the store still holds the
    incident and the token the log recorded."""
    incident = open_incident(store, tmp_path)
    make_token(store, "admin")
    drop_every_trigger(attacker)
    run(attacker, "DELETE FROM audit_log", "DELETE FROM audit_head")
    report = store.verify_audit()
    assert not report.intact and report.entries == 0
    assert f"incident {incident} exists but no audit entry records it" in report.problem
    run(attacker, "DELETE FROM signals", "DELETE FROM incidents")
    report = store.verify_audit()
    assert not report.intact and "API token(s)" in report.problem


def test_a_tail_cut_past_an_incident_is_tampering(store: Store, attacker: sa.Engine, tmp_path: Path) -> None:
    fill(store, 3)
    incident = open_incident(store, tmp_path)
    fill(store, 2, start=100)
    drop_every_trigger(attacker)
    run(attacker, "DELETE FROM audit_log WHERE seq > 3",
        "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_log WHERE seq = 3)")
    report = store.verify_audit()
    assert not report.intact and report.first_bad_seq == 4
    assert f"incident {incident} exists but no audit entry records it" in report.problem


# -- the attacker with the whole database: only the checkpoints catch it --------------------------


@pytest.fixture
def anchored(store: Store, tmp_path: Path) -> tuple[Path, Path]:
    """Entries 1..5 and 6..8 each covered by a signed checkpoint; returns (file, key file)."""
    from heald.store.checkpoints import (  # noqa: F401
        CheckpointError,
        load_signing_key,
        load_verify_key,
        verify_with_checkpoints,
        write_checkpoint,
    )

    key_file, cp_file = tmp_path / "anchor" / "audit.key", tmp_path / "anchor" / "checkpoints.jsonl"
    key = load_signing_key(key_file)
    fill(store, 5)
    assert write_checkpoint(store, cp_file, key).seq == 5
    assert write_checkpoint(store, cp_file, key) is None  # nothing new
    fill(store, 3, start=5)
    assert write_checkpoint(store, cp_file, key).seq == 8
    return cp_file, key_file


def check(store: Store, anchored: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    from heald.store.checkpoints import (  # noqa: F401
        CheckpointError,
        load_signing_key,
        load_verify_key,
        verify_with_checkpoints,
        write_checkpoint,
    )

    return verify_with_checkpoints(store, anchored[0], load_verify_key(anchored[1]))


def test_checkpoints_match_an_untouched_chain(store: Store, anchored: tuple[Path, Path]) -> None:
    fill(store, 2, start=8)  # entries after the newest checkpoint are fine
    report = check(store, anchored)
    assert report.intact and report.entries == 10 and report.checkpoints == 2


def test_a_rewritten_and_rehashed_log_is_caught_by_the_checkpoints(store: Store, attacker: sa.Engine,
                                                                    anchored: tuple[Path, Path]) -> None:
    drop_every_trigger(attacker)
    rechain(attacker, 7, {7: "nothing happened"})
    assert store.verify_audit().intact  # the chain alone is fooled
    report = check(store, anchored)
    assert not report.intact and report.first_bad_seq == 6 and "rewritten" in report.problem
    assert "checkpoint 2" in report.problem

    rechain(attacker, 2, {2: "forged"})
    report = check(store, anchored)
    assert not report.intact and report.first_bad_seq == 1 and "checkpoint 1" in report.problem


def test_a_cut_tail_with_the_head_moved_back_is_caught_by_the_checkpoints(store: Store, attacker: sa.Engine,
                                                                           anchored: tuple[Path, Path]) -> None:
    drop_every_trigger(attacker)
    run(attacker, "DELETE FROM audit_log WHERE seq > 6",
        "UPDATE audit_head SET seq = 6, hash = (SELECT hash FROM audit_log WHERE seq = 6)")
    assert store.verify_audit().intact
    report = check(store, anchored)
    assert not report.intact and report.first_bad_seq == 7
    assert "entries 7..8 were removed" in report.problem and "checkpoint 2" in report.problem


def test_a_wiped_log_is_caught_by_the_checkpoints(store: Store, attacker: sa.Engine, anchored: tuple[Path, Path]) -> None:
    drop_every_trigger(attacker)
    if attacker.dialect.name == "postgresql":
        run(attacker, "TRUNCATE audit_log, audit_head")
    else:
        run(attacker, "DELETE FROM audit_log", "DELETE FROM audit_head")
    assert store.verify_audit().intact  # nothing in the store tells
    report = check(store, anchored)
    assert not report.intact and report.first_bad_seq == 1 and "it is empty" in report.problem


def test_a_broken_chain_is_never_signed(store: Store, attacker: sa.Engine, anchored: tuple[Path, Path]) -> None:
    from heald.store.checkpoints import (  # noqa: F401
        CheckpointError,
        load_signing_key,
        load_verify_key,
        verify_with_checkpoints,
        write_checkpoint,
    )

    cp_file, key_file = anchored
    fill(store, 1, start=8)
    drop_every_trigger(attacker)
    rechain(attacker, 3, {3: "forged"})
    before = cp_file.read_text()
    with pytest.raises(CheckpointError, match="not signed: at entry 1: entries 1..8 were rewritten"):
        write_checkpoint(store, cp_file, load_signing_key(key_file))
    assert cp_file.read_text() == before


def test_an_edited_checkpoint_file_is_detected(store: Store, anchored: tuple[Path, Path], tmp_path: Path) -> None:
    from heald.store.checkpoints import (  # noqa: F401
        CheckpointError,
        load_signing_key,
        load_verify_key,
        verify_with_checkpoints,
        write_checkpoint,
    )

    cp_file, key_file = anchored
    lines = cp_file.read_text().splitlines()
    first = json.loads(lines[0])

    cp_file.write_text(json.dumps({**first, "seq": 4}) + "\n" + lines[1] + "\n")
    report = check(store, anchored)
    assert not report.intact and "checkpoint 1 is not signed" in report.problem

    cp_file.write_text(lines[1] + "\n")  # checkpoint 1 removed
    report = check(store, anchored)
    assert not report.intact and "expected checkpoint 1, found 2" in report.problem

    other = load_signing_key(tmp_path / "other.key")  # a checkpoint signed with another key
    cp_file.write_text("\n".join(lines) + "\n")
    write_checkpoint_with_other = pytest.raises(CheckpointError, match="not signed by this key")
    with write_checkpoint_with_other:
        write_checkpoint(store, cp_file, other)

    cp_file.write_text("not json\n")
    report = check(store, anchored)
    assert not report.intact and "not JSON" in report.problem


def test_the_signing_key_is_private(tmp_path: Path) -> None:
    from heald.store.checkpoints import (  # noqa: F401
        CheckpointError,
        load_signing_key,
        load_verify_key,
        verify_with_checkpoints,
        write_checkpoint,
    )

    old = os.umask(0o022)
    try:
        path = tmp_path / "keys" / "audit.key"
        load_signing_key(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        path.chmod(0o644)
        with pytest.raises(CheckpointError, match="mode 0644.*chmod 600"):
            load_signing_key(path)
    finally:
        os.umask(old)


def test_a_periodic_checkpoint_walks_from_the_newest_one(store: Store, attacker: sa.Engine,
                                                         anchored: tuple[Path, Path]) -> None:
    """``full=False`` (the periodic checkpoint) checks only the entries from the newest
    checkpoint on; what it does not walk, the full verification still finds."""
    from heald.store.checkpoints import CheckpointError, load_signing_key, write_checkpoint

    cp_file, key_file = anchored
    key = load_signing_key(key_file)
    drop_every_trigger(attacker)
    run(attacker, "UPDATE audit_log SET reason = 'changed' WHERE seq = 3")  # before checkpoint 2 (entry 8)
    fill(store, 1, start=8)
    with pytest.raises(CheckpointError, match="entry 3 was altered"):
        write_checkpoint(store, cp_file, key)  # full: the whole chain
    assert write_checkpoint(store, cp_file, key, full=False).seq == 9  # signs entry 9's true hash
    report = check(store, anchored)
    assert not report.intact and report.first_bad_seq == 3 and "altered" in report.problem

    run(attacker, "UPDATE audit_log SET reason = 'changed' WHERE seq = 9")
    fill(store, 1, start=9)
    with pytest.raises(CheckpointError, match="not signed: at entry 9: entry 9 was altered"):
        write_checkpoint(store, cp_file, key, full=False)
