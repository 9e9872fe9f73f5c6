"""Database engines for heald's store: a SQLite file (WAL mode) by default, PostgreSQL by URL.

Writes and reads take different paths. SQLite write transactions begin with ``BEGIN IMMEDIATE``
so that writers serialize instead of failing on a lock upgrade, and the writers of one process
queue for the database's single write lock in arrival order (:func:`write_gate`); reads go
through an engine of their own (:func:`create_engine` with ``read_only``) whose transactions
are plain deferred ``BEGIN`` on connections with ``PRAGMA query_only``: in WAL mode a reader
never waits for a writer, and a write attempted on the read path fails. PostgreSQL reads run in
``READ ONLY`` transactions; writers that must serialize (the audit chain, correlation) take a
transaction-scoped advisory lock through :func:`lock`.

Lock order (PostgreSQL). Every writer appends to the one audit hash chain, so writers are
serialized by one transaction-scoped advisory lock, the *writer lock* (:data:`WRITER_LOCK`, the
audit chain's). To make deadlocks impossible it is always the FIRST lock a transaction takes:
:func:`install_lock_order` makes a session take it before its first write (flush), its first
``SELECT … FOR UPDATE`` / ``FOR SHARE`` (``session.get(…, with_for_update=True)``) and its
first other advisory lock (:func:`lock`). So no transaction ever holds a row lock (an
incident's, or the ``FOR KEY SHARE`` a foreign key takes on it) or a named lock (a grouping
key, a lease, a breaker) while it waits for the writer lock — the cycle that deadlocked webhook
batches against healing steps. After it, named locks and row locks are taken in any order:
only the holder of the writer lock can wait on them, and plain reads take no locks. Reads
never take the writer lock. Code outside :class:`heald.store.Store`'s sessions that writes to
heald's tables must call :func:`take_writer_lock` first.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from heald.files import private_dir, private_file


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver for PostgreSQL URLs (``postgres://`` and ``postgresql://``)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def sqlite_file(engine_or_url: Engine | str) -> Path | None:
    """The database file of a SQLite URL or engine; None for another database, an in-memory
    SQLite database or a ``file:`` URI."""
    if not is_sqlite(engine_or_url):
        return None
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else sa.make_url(normalize_url(engine_or_url))
    db_path = url.database
    if not db_path or db_path == ":memory:" or db_path.startswith("file:"):
        return None
    return Path(db_path)


def _private_database_file(path: Path) -> None:
    """The SQLite file and its ``-wal``/``-shm`` companions are readable by their owner only:
    a missing parent directory is created 0700, the file 0600 (SQLite gives ``-wal`` and
    ``-shm`` the database file's mode), and the mode of files already there is tightened."""
    if not path.parent.exists():
        private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            private_file(companion)


#: Seconds a SQLite connection waits for a lock another connection holds (the busy timeout),
#: and a writer for its turn at :func:`write_gate`.
SQLITE_BUSY_TIMEOUT = 30.0

#: Threads of the HTTP API that may use the store at once: Starlette runs heald's synchronous
#: endpoints (and ``run_in_threadpool``) in anyio's default thread limiter, 40 threads.
API_THREADS = 40
#: heald's other threads that use the store besides healing workflows and the API: the probe
#: runner, the log tailers, the reaper, the audit checkpointer.
BACKGROUND_THREADS = 4
#: Seconds a thread waits for a pooled connection before SQLAlchemy raises ``TimeoutError``
#: ("QueuePool limit … reached"); a transient error (:func:`heald.store.retry.is_transient`)
#: that the store and the healing steps wait out again (:func:`heald.store.retry.retrying`).
POOL_TIMEOUT = 10.0
#: Healing workflows that run at once when the caller does not say (``healing.max_concurrent``).
DEFAULT_CONCURRENCY = 16
#: The most connections an engine keeps open for healing workflows, whatever
#: ``healing.max_concurrent`` (most running healings wait: for a verification window, an
#: approval, a human; they hold no connection meanwhile).
MAX_POOLED_WORKFLOWS = 32


def pool_settings(concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, Any]:
    """SQLAlchemy ``QueuePool`` arguments for an engine used by ``concurrency`` healing workflows
    at once (``healing.max_concurrent``) plus the API's threads: each workflow and each background
    thread (:data:`BACKGROUND_THREADS`) uses at most one connection of an engine at a time, so
    they keep ``min(concurrency, MAX_POOLED_WORKFLOWS) + BACKGROUND_THREADS`` connections open; the API's threads
    (:data:`API_THREADS`) may add as many, closed again when returned. A thread that finds none
    free waits :data:`POOL_TIMEOUT` seconds, then retries (never fails a healing on it)."""
    if concurrency < 1:
        raise ValueError(f"concurrency: expected at least 1 workflow, got {concurrency}")
    return {"pool_size": min(concurrency, MAX_POOLED_WORKFLOWS) + BACKGROUND_THREADS, "max_overflow": API_THREADS,
            "pool_timeout": POOL_TIMEOUT}


def create_engine(url: str, *, read_only: bool = False, concurrency: int | None = None, **kwargs: Any) -> Engine:
    """Create an engine for ``url``. For SQLite: the parent directory is created (0700), the
    database file is 0600 (see :func:`_private_database_file`), WAL mode and a 30 s busy
    timeout are set, and every transaction is ``BEGIN IMMEDIATE`` — or, with ``read_only``, a
    deferred ``BEGIN`` on a connection with ``PRAGMA query_only`` (a write on it raises
    ``sqlite3.OperationalError: attempt to write a readonly database``). For PostgreSQL,
    ``read_only`` makes every transaction ``READ ONLY``. ``concurrency`` (healing workflows at
    once) sizes the connection pool of a PostgreSQL or SQLite-file engine (:func:`pool_settings`;
    None: SQLAlchemy's default pool, 5 + 10)."""
    url = normalize_url(url)
    if concurrency is not None and (not is_sqlite(url) or sqlite_file(url) is not None):
        kwargs = {**pool_settings(concurrency), **kwargs}  # an in-memory SQLite database has one connection
    if is_sqlite(url):
        if (db_file := sqlite_file(url)) is not None:
            _private_database_file(db_file)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
                                  **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take over transaction control from pysqlite so BEGIN IMMEDIATE can be issued.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            if read_only:
                cur.execute("PRAGMA query_only=ON")
            cur.close()

        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(url, **kwargs)
    return engine.execution_options(postgresql_readonly=True) if read_only else engine


#: How many urgent writers (the ingest path, :func:`urgent_writes`) in a row may take the write
#: gate while another writer waits: then one of those waiting gets its turn, so a flood of
#: signals delays the healings' steps but never stops them.
URGENT_RUN = 4


class _Waiter:
    """A thread waiting for the gate: woken by its own event, so a release wakes one thread."""

    __slots__ = ("event", "granted", "ident")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.event = threading.Event()
        self.granted = False


class _FairLock:
    """A lock handed over in arrival order: a thread that releases it and asks again queues
    behind the threads already waiting (a plain lock, like SQLite's busy handler that polls,
    lets the releasing thread take it straight back and starve the others). Urgent writers
    (:func:`urgent_writes`: storing signals, which a sender waits for) go before the others
    waiting, at most :data:`URGENT_RUN` in a row while another waits. A release hands the lock
    to the next waiter directly and wakes that thread alone (with a hundred healings waiting,
    waking them all at every release cost a fifth of the process's CPU)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._normal: deque[_Waiter] = deque()
        self._urgent: deque[_Waiter] = deque()
        self._owner: int | None = None
        self._urgent_run = 0

    def acquire(self, timeout: float, urgent: bool = False) -> bool:
        """Wait at most ``timeout`` seconds for this thread's turn; True when it holds the lock.
        False at once for a thread that holds it already (a write transaction opened inside
        another one: SQLite's busy timeout then decides, as without the lock)."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                return False
            if self._owner is None and not self._normal and not self._urgent:
                self._owner = me
                return True
            waiter = _Waiter(me)
            (self._urgent if urgent else self._normal).append(waiter)
        try:
            if waiter.event.wait(timeout):
                return True
        except BaseException:  # KeyboardInterrupt in the wait: leave the queue, pass on a turn given
            with self._mutex:
                if not waiter.granted:
                    (self._urgent if urgent else self._normal).remove(waiter)
                    raise
            self.release()
            raise
        with self._mutex:  # timed out, unless the turn came meanwhile
            if waiter.granted:
                return True
            (self._urgent if urgent else self._normal).remove(waiter)
            return False

    def release(self) -> None:
        with self._mutex:
            nxt = self._next()
            self._owner = nxt.ident if nxt is not None else None
            if nxt is not None:
                nxt.granted = True
                nxt.event.set()

    def _next(self) -> _Waiter | None:
        """The waiter whose turn it is (None: nobody waits); called with the mutex held."""
        if self._urgent and (not self._normal or self._urgent_run < URGENT_RUN):
            self._urgent_run += 1
            return self._urgent.popleft()
        self._urgent_run = 0
        return self._normal.popleft() if self._normal else None


_URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("heald.store.urgent_writes", default=False)


@contextmanager
def urgent_writes() -> Iterator[None]:
    """Within it, this thread's write transactions on a SQLite file are urgent: they take the
    write gate before the other writers waiting (see :class:`_FairLock`). For the ingest path,
    whose sender waits for the commit; the healings' steps can wait a few transactions."""
    token = _URGENT.set(True)
    try:
        yield
    finally:
        _URGENT.reset(token)


_gates: dict[str, _FairLock] = {}
_gates_lock = threading.Lock()


def write_gate(engine: Engine) -> AbstractContextManager[None]:
    """A context manager a write transaction on ``engine`` is opened in.

    SQLite file: the writers of this process on that file take turns in arrival order (a
    webhook batch stored in chunks lets the workflow steps waiting meanwhile in between),
    urgent ones (:func:`urgent_writes`) first, at most :data:`URGENT_RUN` in a row; a
    writer that waits longer than :data:`SQLITE_BUSY_TIMEOUT` goes on without its turn and
    meets SQLite's own busy timeout. Other databases (and in-memory SQLite): nothing.
    """
    db_file = sqlite_file(engine)
    if db_file is None:
        return nullcontext()
    key = _gate_key(db_file)
    with _gates_lock:
        gate = _gates.setdefault(key, _FairLock())
    return _turn(gate)


@functools.lru_cache(maxsize=64)
def _gate_key(db_file: Path) -> str:
    """The gate of a database file is its real path (resolved once: it walks the directories)."""
    return str(db_file.resolve())


@contextmanager
def _turn(gate: _FairLock) -> Iterator[None]:
    held = gate.acquire(SQLITE_BUSY_TIMEOUT, _URGENT.get())
    try:
        yield
    finally:
        if held:
            gate.release()


#: The writer lock's name (see the module docstring); it is the audit chain's lock.
WRITER_LOCK = "heald.audit"
_HELD = "heald.writer_lock_held"


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def take_writer_lock(session: Session) -> None:
    """Take the writer lock (:data:`WRITER_LOCK`) in ``session``'s transaction unless it
    already holds it; it is held until the transaction ends. PostgreSQL only (SQLite's
    ``BEGIN IMMEDIATE`` holds the database's single write lock already)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    tx = session.get_transaction()
    if tx is None or session.info.get(_HELD) is tx:
        return
    session.info[_HELD] = tx  # set first: the statement below must not take it again
    session.connection().execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _advisory_key(WRITER_LOCK)})


def lock(session: Session, name: str) -> None:
    """Serialize writers on ``name`` until the transaction ends.

    PostgreSQL: the writer lock first (see the module docstring), then
    ``pg_advisory_xact_lock`` on ``name``; SQLite: nothing to do (``BEGIN IMMEDIATE`` already
    holds the database's single write lock).
    """
    if session.get_bind().dialect.name == "postgresql":
        take_writer_lock(session)
        if name != WRITER_LOCK and name not in _held(session):
            session.connection().execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _advisory_key(name)})
            _held(session).add(name)


def lock_all(session: Session, names: list[str]) -> None:
    """:func:`lock` on each of ``names``, in one statement (PostgreSQL; in sorted order, after
    the writer lock). A later :func:`lock` on one of them in the transaction costs nothing."""
    if session.get_bind().dialect.name != "postgresql":
        return
    take_writer_lock(session)
    todo = sorted(set(names) - _held(session) - {WRITER_LOCK})
    if todo:
        session.connection().execute(
            sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ks AS bigint[])) WITH ORDINALITY AS t(k, n) "
                    "ORDER BY n"), {"ks": [_advisory_key(n) for n in todo]})
        _held(session).update(todo)


_LOCKS = "heald.named_locks_held"


def _held(session: Session) -> set[str]:
    """The named locks ``session``'s current transaction holds (advisory locks end with it)."""
    tx = session.get_transaction()
    held: tuple[Any, set[str]] | None = session.info.get(_LOCKS)
    if held is None or held[0] is not tx:
        held = (tx, set())
        session.info[_LOCKS] = held
    return held[1]


def install_lock_order(sessions: Any) -> None:
    """Make every session of ``sessions`` (a ``sessionmaker`` or ``Session`` class) take the
    writer lock before its first write, row lock or advisory lock (see the module docstring)."""

    @sa.event.listens_for(sessions, "before_flush")
    def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
        if session.new or session.dirty or session.deleted:
            take_writer_lock(session)

    @sa.event.listens_for(sessions, "do_orm_execute")
    def _before_execute(state: Any) -> None:
        stmt = state.statement
        locking = state.is_select and getattr(stmt, "_for_update_arg", None) is not None
        if locking or state.is_insert or state.is_update or state.is_delete or (
                isinstance(stmt, sa.TextClause) and "advisory" in stmt.text.lower()):
            take_writer_lock(state.session)
