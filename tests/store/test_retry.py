"""Transient database errors and the store's lock order, on a real PostgreSQL server and
real SQLite files (issue 12, item 1)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from heald import correlate
from heald.models import IncidentState, Signal
from heald.store import Store, audit
from heald.store.db import normalize_url
from heald.store.retry import TransientDatabaseError, is_transient, retry_transient
from heald.store.tables import IncidentRow
from tests.conftest import make_config, wait_for


def _pg(url: str) -> psycopg.Connection:
    return psycopg.connect(normalize_url(url).replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.mark.postgres
def test_real_postgres_deadlock_and_terminated_connection_are_transient_a_bad_query_is_not(pg_url: str) -> None:
    engine = sa.create_engine(normalize_url(pg_url))
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE t (id int PRIMARY KEY, v int)"))
        c.execute(sa.text("INSERT INTO t VALUES (1, 0), (2, 0)"))
    errors: list[BaseException] = []
    first_locked, second_locked = threading.Event(), threading.Event()

    def writer(mine: int, other: int, locked: threading.Event, wait: threading.Event) -> None:
        try:
            with engine.begin() as c:
                c.execute(sa.text("UPDATE t SET v = v + 1 WHERE id = :i"), {"i": mine})
                locked.set()
                wait.wait(10)
                c.execute(sa.text("UPDATE t SET v = v + 1 WHERE id = :i"), {"i": other})
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(1, 2, first_locked, second_locked)),
               threading.Thread(target=writer, args=(2, 1, second_locked, first_locked))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and "deadlock detected" in str(errors[0])
    assert is_transient(errors[0])

    with engine.connect() as victim:
        pid = victim.scalar(sa.text("SELECT pg_backend_pid()"))
        with _pg(pg_url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(sa.exc.DBAPIError) as killed:
            victim.execute(sa.text("SELECT 1"))
    assert is_transient(killed.value)

    with engine.connect() as c, pytest.raises(sa.exc.DBAPIError) as bad:
        c.execute(sa.text("SELECT * FROM no_such_table"))
    assert not is_transient(bad.value)
    with engine.begin() as c, pytest.raises(sa.exc.IntegrityError) as dup:
        c.execute(sa.text("INSERT INTO t VALUES (1, 0)"))
    assert not is_transient(dup.value)
    engine.dispose()


def test_sqlite_database_is_locked_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (v int)")
    holder.execute("BEGIN IMMEDIATE")
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with pytest.raises(sa.exc.OperationalError) as locked:
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO t VALUES (1)"))
    assert "database is locked" in str(locked.value) and is_transient(locked.value)
    holder.execute("ROLLBACK")
    holder.close()
    engine.dispose()


def test_retry_transient_reruns_only_transient_errors_and_bounds_them() -> None:
    calls = {"n": 0}

    @retry_transient(attempts=3, max_seconds=5)
    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
        return "done"

    assert flaky() == "done" and calls["n"] == 3

    @retry_transient(attempts=2, max_seconds=5)
    def always_busy() -> None:
        calls["n"] += 1
        raise sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))

    calls["n"] = 0
    with pytest.raises(TransientDatabaseError) as spent:
        always_busy()
    assert calls["n"] == 2 and isinstance(spent.value.__cause__, sa.exc.OperationalError)

    @retry_transient(attempts=5, max_seconds=5)
    def bug() -> None:
        calls["n"] += 1
        raise ValueError("not a database error")

    calls["n"] = 0
    with pytest.raises(ValueError):
        bug()
    assert calls["n"] == 1


def _open_incident(store: Store, tmp_path: Path) -> int:
    with store.tx() as s:
        r = correlate.ingest(s, Signal(source="test", service="shop", summary="down",
                                       labels={"alertname": "Down", "service": "shop"}), make_config(tmp_path))
    assert r.incident_id is not None
    return r.incident_id


@pytest.mark.postgres
def test_a_row_lock_is_never_held_while_waiting_for_the_audit_chain(pg_url: str, tmp_path: Path) -> None:
    """The interleaving that deadlocked webhook batches against healing steps: A locks an
    incident row (a transition) and then appends to the audit chain; B appends to the chain
    (a batch's first signal) and then writes the same incident row (the batch's next signal).
    With one lock order, B waits for A at its first write instead, and both commit."""
    store = Store(pg_url)
    store.migrate()
    incident_id = _open_incident(store, tmp_path)
    errors: list[BaseException] = []
    a_has_row, b_done = threading.Event(), threading.Event()
    b_pid: list[int] = []

    def a() -> None:
        try:
            with store.tx() as s:
                row = s.get(IncidentRow, incident_id, with_for_update=True)
                assert row is not None
                a_has_row.set()

                def b_waits_or_appended() -> bool:  # B is blocked on a lock, or got past its append
                    if b_done.is_set():
                        return True
                    with store.engine.connect() as c:
                        return bool(b_pid) and c.scalar(sa.text(
                            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"), {"p": b_pid[0]})
                wait_for(b_waits_or_appended, what="B to reach the audit chain")
                row.title = "retitled by A"
                audit.append(s, actor="test", event="a", incident_id=incident_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def b() -> None:
        try:
            a_has_row.wait(10)
            with store.tx() as s:
                b_pid.append(s.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
                audit.append(s, actor="test", event="b", incident_id=incident_id)
                b_done.set()
                row = s.get(IncidentRow, incident_id)
                assert row is not None
                row.severity = "critical"
                s.flush()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            b_done.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    inc = store.get_incident(incident_id)
    assert (inc.title, inc.severity.value) == ("retitled by A", "critical")
    assert store.verify_audit().intact
    store.close()


@pytest.mark.postgres
def test_a_commit_whose_answer_is_lost_counts_once(pg_url: str, tmp_path: Path) -> None:
    """The connection dies while the COMMIT's answer is on its way: the store confirms the
    commit through the audit entry it appended instead of running the work again."""
    store = Store(pg_url)
    store.migrate()
    incident_id = _open_incident(store, tmp_path)

    @sa.event.listens_for(store.engine, "commit")
    def _commit_then_lose_the_answer(conn: sa.Connection) -> None:
        if conn.info.pop("lose_commit_answer", False):
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            dbapi.commit()  # the work commits...
            dbapi.cursor().execute("SELECT 1")  # ...a new transaction begins, and the connection dies
            with _pg(pg_url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info["pid"],))

    with store.tx() as s:
        conn = s.connection()
        conn.info["pid"] = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        conn.info["lose_commit_answer"] = True
        store_transition = audit.append(s, actor="test", event="once", incident_id=incident_id)
    assert store_transition.event == "once"
    assert [e.event for e in store.audit_entries(incident_id=incident_id)].count("once") == 1
    assert store.get_incident(incident_id).state == IncidentState.observing
    store.close()
