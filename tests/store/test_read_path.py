"""Reads take no write lock (issue 12, item 2): a read completes while another connection holds
a write transaction open on the same SQLite file, a write attempted on the read path fails, and
the writers of one process take turns in arrival order."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from heald.models import IncidentState
from heald.store import Store, audit
from heald.store.tables import AuditRow, IncidentRow
from tests.conftest import wait_for

#: Seconds a read may take while the writer holds the lock. The old code waited SQLite's 30 s
#: busy timeout and then failed with "database is locked".
READ_DEADLINE = 5.0


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'heald.db'}")
    s.migrate()
    yield s
    s.close()


@contextmanager
def writer_holding_the_lock(store: Store) -> Iterator[None]:
    """A thread with a write transaction open (``BEGIN IMMEDIATE``, one audit entry written but
    not committed) until the block ends; the transaction is then rolled back."""
    holding, done = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            with store.tx() as s:
                audit.append(s, actor="test", event="test.uncommitted", reason="held open")
                holding.set()
                done.wait(60)
                raise _Rollback
        except _Rollback:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)
            holding.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    assert holding.wait(10) and not failure, failure
    try:
        yield
    finally:
        done.set()
        thread.join(10)


class _Rollback(Exception):
    pass


def in_thread(fn: Callable[[], Any], deadline: float = READ_DEADLINE) -> Any:
    """Run ``fn`` in a thread; its result, or the test fails when it is not back within
    ``deadline`` seconds (it waits for a lock) or it raised."""
    out: list[Any] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            err.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        pytest.fail(f"{fn} still waits after {deadline:g} s while a writer holds the lock")
    if err:
        raise err[0]
    return out[0]


def test_reads_complete_while_a_writer_holds_the_write_lock(sqlite_store: Store) -> None:
    store = sqlite_store
    store.record(actor="test", event="test.committed", reason="before the writer")
    with writer_holding_the_lock(store):
        # every kind of read the API, the dashboard and /healthz do
        assert in_thread(store.count_incidents_by_state) == {}
        assert in_thread(store.last_audit_seq) == 1  # the last commit, not the writer's open transaction
        assert in_thread(lambda: [e.event for e in store.audit_entries()]) == ["test.committed"]
        assert in_thread(lambda: store.list_incidents(state=IncidentState.observing)) == []
        assert in_thread(store.verify_audit).intact
        assert in_thread(store.audit_facets)["events"] == ["test.committed"]
    assert store.last_audit_seq() == 1  # the writer rolled back


def test_a_write_in_a_read_transaction_fails(store: Store) -> None:
    """On SQLite (PRAGMA query_only) and PostgreSQL (READ ONLY): the read path cannot write,
    neither through the ORM nor the audit chain, and nothing is stored."""
    with pytest.raises(sa.exc.DBAPIError, match=r"(?i)readonly|read-only"), store.read() as s:
        audit.append(s, actor="test", event="test.write_in_read", reason="must fail")
    with pytest.raises(sa.exc.DBAPIError, match=r"(?i)readonly|read-only"), store.read() as s:
        s.execute(sa.update(IncidentRow).values(title="x"))
    with store.read() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditRow)) == 0
    # the write path still writes, and a read after it sees it (the pools are separate)
    store.record(actor="test", event="test.write", reason="on the write path")
    assert [e.event for e in store.audit_entries()] == ["test.write"]


def test_writers_of_one_process_take_turns_in_arrival_order(sqlite_store: Store) -> None:
    """A writer that commits and at once asks again (a batch stored in chunks) queues behind
    the writers already waiting, instead of taking the lock straight back."""
    store = sqlite_store
    order: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def batch() -> None:
        with store.tx() as s:
            audit.append(s, actor="test", event="test.chunk", reason="chunk 1")
            order.append("chunk 1")
            first_in.set()
            release.wait(10)
        with store.tx() as s:  # asks again straight after its commit
            audit.append(s, actor="test", event="test.chunk", reason="chunk 2")
            order.append("chunk 2")

    def other(name: str) -> Callable[[], None]:
        def run() -> None:
            with store.tx() as s:
                audit.append(s, actor="test", event="test.other", reason=name)
                order.append(name)
        return run

    threads = [threading.Thread(target=batch, daemon=True)]
    threads[0].start()
    assert first_in.wait(10)
    for queued, name in enumerate(("step A", "step B"), start=1):
        t = threading.Thread(target=other(name), daemon=True)
        t.start()
        threads.append(t)
        wait_for(lambda n=queued: _waiting(store) >= n, timeout=10, what=f"{name} to queue")
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["chunk 1", "step A", "step B", "chunk 2"]


def _waiting(store: Store) -> int:
    """How many writers wait for their turn on ``store``'s database (the gate's queue)."""
    from heald.store import db

    db_file = db.sqlite_file(store.engine)
    assert db_file is not None
    gate = db._gates.get(str(db_file.resolve()))
    return len(gate._normal) + len(gate._urgent) if gate is not None else 0


def test_urgent_writers_go_first_but_never_starve_the_others(sqlite_store: Store) -> None:
    """Storing signals (``urgent_writes``: a sender waits for the commit) goes before the
    healings' steps already waiting, at most ``URGENT_RUN`` in a row while a step waits; then
    the step that waited longest gets its turn. A writer that times out leaves the queue."""
    from heald.store import db

    store = sqlite_store
    order: list[str] = []
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with store.tx() as s:
            audit.append(s, actor="test", event="test.hold", reason="holds the gate")
            held.set()
            release.wait(10)

    def writer(name: str, urgent: bool) -> Callable[[], None]:
        def run() -> None:
            with db.urgent_writes() if urgent else nullcontext():
                with store.tx() as s:
                    audit.append(s, actor="test", event="test.write", reason=name)
                    order.append(name)
        return run

    threads = [threading.Thread(target=holder, daemon=True)]
    threads[0].start()
    assert held.wait(10)
    queue = [("step A", False), ("step B", False)] + [(f"signals {i}", True) for i in range(1, db.URGENT_RUN + 2)]
    for queued, (name, urgent) in enumerate(queue, start=1):
        t = threading.Thread(target=writer(name, urgent), daemon=True)
        t.start()
        threads.append(t)
        wait_for(lambda n=queued: _waiting(store) >= n, timeout=10, what=f"{name} to queue")
    release.set()
    for t in threads:
        t.join(10)
    urgent_first = [f"signals {i}" for i in range(1, db.URGENT_RUN + 1)]
    assert order == [*urgent_first, "step A", f"signals {db.URGENT_RUN + 1}", "step B"]
    # the order is in the audit chain too, which stays intact
    assert [e.reason for e in store.audit_entries()][1:] == order
    with store.read() as s:
        assert audit.verify(s).intact


def test_a_writer_that_times_out_leaves_the_queue() -> None:
    """A writer whose wait times out is no longer queued: the next release goes to a waiter."""
    from heald.store.db import _FairLock

    gate = _FairLock()
    assert gate.acquire(1.0)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(gate.acquire(0.05)))
    t.start()
    t.join(5)
    assert got == [False] and not gate._normal and not gate._urgent
    gate.release()
    assert gate.acquire(0.05)  # free again: taken at once
    gate.release()
