"""The audit chain detects an entry altered, removed from the middle, or cut from the end."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from heald.store import Store
from tests.conftest import run_heald


def fill(store: Store, n: int = 5) -> None:
    for i in range(n):
        store.record(actor="test", event="test.event", reason=f"entry {i + 1}", details={"i": i, "nested": {"x": [1, 2.5]}})


def drop_guard(store: Store) -> None:
    """What an intruder with database access would do first: drop the append-only triggers."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER audit_log_no_update")
            conn.exec_driver_sql("DROP TRIGGER audit_log_no_delete")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_log_append_only ON audit_log")


def test_intact_chain(store: Store) -> None:
    fill(store)
    report = store.verify_audit()
    assert report.intact and report.entries == 5 and report.head_seq == 5


def test_the_database_refuses_updates_and_deletes(store: Store) -> None:
    fill(store, 2)
    for stmt in ("UPDATE audit_log SET reason = 'x' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 1"):
        with pytest.raises(DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(stmt)
    assert store.verify_audit().intact


def test_altered_entry_is_named(store: Store) -> None:
    fill(store)
    drop_guard(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET reason = 'nothing happened' WHERE seq = 3"))
    report = store.verify_audit()
    assert not report.intact and report.first_bad_seq == 3 and "altered" in report.problem


def test_altered_details_are_detected(store: Store) -> None:
    fill(store)
    drop_guard(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET details = :d WHERE seq = 2"), {"d": json.dumps({"i": 99})})
    report = store.verify_audit()
    assert not report.intact and report.first_bad_seq == 2


def test_rehashed_entry_breaks_the_next_link(store: Store) -> None:
    """An intruder who also recomputes the altered entry's hash is caught by the next entry."""
    from heald.store.audit import entry_hash
    from heald.store.tables import AuditRow

    fill(store)
    drop_guard(store)
    with store.tx() as s:
        row = s.get(AuditRow, 2)
        new_hash = entry_hash(2, row.ts.isoformat(), row.actor, row.event, row.incident_id, "forged", row.details, row.prev_hash)
        s.execute(sa.update(AuditRow).where(AuditRow.seq == 2).values(reason="forged", hash=new_hash))
    report = store.verify_audit()
    assert not report.intact and report.first_bad_seq == 3


def test_removed_entry_is_named(store: Store) -> None:
    fill(store)
    drop_guard(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 2"))
    report = store.verify_audit()
    assert not report.intact and report.first_bad_seq == 2 and "removed" in report.problem


def test_entries_cut_from_the_end_are_detected(store: Store) -> None:
    fill(store)
    drop_guard(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq >= 4"))
    report = store.verify_audit()
    assert not report.intact and report.first_bad_seq == 4 and "removed" in report.problem


def test_cli_audit_verify_reports_the_tampered_row(tmp_path) -> None:
    db = tmp_path / "heald.db"
    env = {"HEALD_DATABASE_URL": f"sqlite:///{db}", "HEALD_STATE_DIR": str(tmp_path / "state")}
    store = Store(f"sqlite:///{db}")
    store.migrate()
    fill(store, 4)
    ok = run_heald("audit", "verify", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"intact": True, "entries": 4, "first_bad_seq": None, "problem": None, "head_seq": 4,
                                     "head_hash": store.audit_entries()[-1].hash, "checkpoints": None}
    drop_guard(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2"))
    store.close()
    bad = run_heald("audit", "verify", env=env)
    assert bad.returncode == 1
    assert "broken at entry 2" in bad.stdout and "altered" in bad.stdout
