"""The store's connection pools are sized with the healings that run at once
(``healing.max_concurrent``) plus the API's threads, and a thread that finds no free connection
waits its turn again instead of failing (issue 19): real SQLite files and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from heald.config import HealdConfig
from heald.engine.runtime import dbos_config
from heald.store import Store, db
from heald.store.retry import TransientDatabaseError, is_transient, retry_transient, waited_for_connection
from tests.conftest import make_config


def test_both_pools_are_sized_from_max_concurrent_plus_the_api_threads(db_url: str) -> None:
    store = Store(db_url, concurrency=50)
    try:
        for engine in (store.engine, store.read_engine):
            pool = engine.pool
            assert isinstance(pool, sa.pool.QueuePool)
            assert pool.size() == min(50, db.MAX_POOLED_WORKFLOWS) + db.BACKGROUND_THREADS
            assert pool._max_overflow == db.API_THREADS  # noqa: SLF001 -- QueuePool has no public getter
            assert pool.timeout() == db.POOL_TIMEOUT
    finally:
        store.close()


def test_the_runtime_sizes_the_store_and_dbos_from_the_healing_config(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, healing={"max_concurrent": 64})
    assert dbos_config(cfg)["sys_db_pool_size"] == db.MAX_POOLED_WORKFLOWS + db.BACKGROUND_THREADS
    small = make_config(tmp_path, healing={"max_concurrent": 24})
    assert dbos_config(small)["sys_db_pool_size"] == 24 + db.BACKGROUND_THREADS
    with pytest.raises(ValueError, match="max_concurrent"):
        HealdConfig.model_validate({"healing": {"max_concurrent": 0}})
    with pytest.raises(ValueError, match="concurrency"):
        db.pool_settings(0)


def test_a_step_waits_for_a_pooled_connection_longer_than_its_attempts_allow(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of a one-connection pool is held for 2.5 s; the pool times out every
    0.2 s. A step allowed 3 attempts within 1 s (a database that answers with errors) still
    waits for the connection and then runs once; without a pool-wait bound it gives up."""
    monkeypatch.setattr(db, "POOL_TIMEOUT", 0.2)
    monkeypatch.setattr(db, "API_THREADS", 0)
    monkeypatch.setattr(db, "BACKGROUND_THREADS", 0)
    store = Store(f"sqlite:///{tmp_path / 'heald.db'}", concurrency=1)
    store.migrate()
    ran: list[float] = []

    def step() -> int:
        with store.read_engine.connect() as conn:
            ran.append(time.monotonic())
            return int(conn.scalar(sa.text("SELECT 1")) or 0)

    def hold(seconds: float) -> threading.Thread:
        got = threading.Event()

        def run() -> None:
            with store.read_engine.connect():
                got.set()
                time.sleep(seconds)
        t = threading.Thread(target=run)
        t.start()
        got.wait(5)
        return t

    try:
        impatient = retry_transient(step, attempts=3, max_seconds=1.0)
        holder = hold(2.5)
        with pytest.raises(TransientDatabaseError) as err:
            impatient()
        assert waited_for_connection(err.value) and is_transient(err.value)
        holder.join()

        patient = retry_transient(step, attempts=3, max_seconds=1.0, pool_wait_seconds=30.0)
        holder = hold(2.5)
        t0 = time.monotonic()
        assert patient() == 1
        assert time.monotonic() - t0 >= 2.0 and len(ran) == 1  # it waited, then ran once
        holder.join()
    finally:
        store.close()


def test_a_wait_for_a_connection_is_bounded_too() -> None:
    calls = [0]

    def never_free() -> None:
        calls[0] += 1
        raise sa.exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached, connection timed out, timeout 0.01")

    t0 = time.monotonic()
    with pytest.raises(TransientDatabaseError):
        retry_transient(never_free, attempts=2, max_seconds=0.1, pool_wait_seconds=0.6)()
    assert 0.6 <= time.monotonic() - t0 < 5 and calls[0] > 2  # more runs than attempts, within the bound


@pytest.mark.postgres
def test_a_step_waits_when_postgresql_has_no_connection_slot_left(pg_url: str) -> None:
    """PostgreSQL refuses a new connection because its slots are taken ("sorry, too many clients
    already"; here a real role's ``CONNECTION LIMIT 1``, the same refusal, SQLSTATE 53300): the
    work never reached the database, so a step waits for a slot as it waits for a pooled
    connection instead of spending its attempts (200 healings at once on PostgreSQL ended
    ``failed`` on it)."""
    import uuid

    from heald.store.db import normalize_url

    role = f"heald_one_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalize_url(pg_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1'))
    engine = sa.create_engine(sa.make_url(normalize_url(pg_url)).set(username=role), poolclass=sa.pool.NullPool)
    ran: list[float] = []

    def step() -> int:
        with engine.connect() as conn:
            ran.append(time.monotonic())
            return int(conn.scalar(sa.text("SELECT 1")) or 0)

    def hold(seconds: float) -> threading.Thread:
        got = threading.Event()

        def run() -> None:
            with engine.connect():
                got.set()
                time.sleep(seconds)
        t = threading.Thread(target=run)
        t.start()
        assert got.wait(5)
        return t

    try:
        holder = hold(2.5)
        with pytest.raises(TransientDatabaseError) as err:
            retry_transient(step, attempts=3, max_seconds=1.0)()
        assert "too many connections" in str(err.value.__cause__) and waited_for_connection(err.value)
        holder.join()

        holder = hold(2.5)
        t0 = time.monotonic()
        assert retry_transient(step, attempts=3, max_seconds=1.0, pool_wait_seconds=30.0)() == 1
        assert time.monotonic() - t0 >= 2.0 and len(ran) == 1  # it waited for the slot, then ran once
        holder.join()
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
