"""One heald per state directory and database: :class:`InstanceLock`.

A second heald on the same state (started by mistake) would adopt or start the managed
services, launch DBOS and resume the first one's healings before failing anywhere else, and
two healds would then act on the same targets outside each other's workflows (DESIGN.md
invariant 1). So the first thing a heald does, before anything acts, is take:

- an exclusive ``flock(2)`` on ``<state_dir>/heald.lock`` (its pid is written in it), held
  until the process ends (the kernel drops it when the process dies, so a killed heald never
  leaves a stale lock);
- for a SQLite database, the same on ``<database>.heald-lock`` (SQLite serves one heald
  process: a second worker with its own state directory but the same database file is refused);
- for PostgreSQL, a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated
  connection whose ``application_name`` names this heald's pid and host, unless
  ``database_lock: false`` (several workers sharing one database, each with its own state
  directory).

When another heald holds one of them :func:`acquire` raises :class:`AlreadyRunning` naming the
other holder's pid, and takes nothing.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from heald.config import HealdConfig
from heald.files import private_dir
from heald.store.db import is_sqlite, normalize_url

#: The advisory lock's two keys (``pg_try_advisory_lock(int4, int4)``): "heal" and "d".
_PG_KEYS = (0x6865616C, 0x64)
_APP_PREFIX = "heald instance lock"


class AlreadyRunning(RuntimeError):
    """Another heald holds the state directory or the database; the message names the lock and
    the other holder's pid (when known)."""


class InstanceLock:
    """The locks a running heald holds (see the module docstring); :meth:`release` drops them.
    Build one with :func:`acquire`."""

    def __init__(self) -> None:
        self._files: list[int] = []
        self._pg: Any = None  # the dedicated connection holding the advisory lock
        self._pg_engine: sa.Engine | None = None
        self.paths: list[Path] = []

    def release(self) -> None:
        """Drop every lock (idempotent)."""
        if self._pg is not None:
            try:
                self._pg.close()  # the session ends, and its advisory lock with it
            finally:
                self._pg = None
        if self._pg_engine is not None:
            self._pg_engine.dispose()
            self._pg_engine = None
        for fd in self._files:
            os.ftruncate(fd, 0)  # still held: no other heald's pid is in it
            os.close(fd)  # closing the descriptor drops its flock
        self._files = []

    # -- files -----------------------------------------------------------------------------
    def _lock_file(self, path: Path, what: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise AlreadyRunning(f"another heald ({holder or 'pid unknown'}) is running on {what}; its lock is {path}. "
                                 "Stop it first, or give this heald another state_dir and database_url") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._files.append(fd)
        self.paths.append(path)

    # -- PostgreSQL ------------------------------------------------------------------------
    def _lock_postgres(self, url: str) -> None:
        me = f"{_APP_PREFIX}: pid {os.getpid()} on {socket.gethostname()}"[:63]
        engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool,
                                  connect_args={"application_name": me})
        conn = engine.connect()
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:a, :b)"),
                               {"a": _PG_KEYS[0], "b": _PG_KEYS[1]}).scalar()
            conn.commit()  # the lock is the session's; no transaction stays open on this connection
            if got:
                self._pg, self._pg_engine = conn, engine
                return
            holder = conn.execute(sa.text(
                "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = :a AND l.objid = :b AND l.objsubid = 2 AND l.granted "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"a": _PG_KEYS[0], "b": _PG_KEYS[1]}).first()
        except BaseException:
            conn.close()
            engine.dispose()
            raise
        conn.close()
        engine.dispose()
        who = str(holder[0]).removeprefix(f"{_APP_PREFIX}: ") if holder is not None else "pid unknown"
        where = engine.url.render_as_string(hide_password=True)
        raise AlreadyRunning(f"another heald ({who}) is running on the database {where} (it holds heald's advisory "
                             "lock). Stop it first, or set database_lock: false for several workers on one database")


def acquire(config: HealdConfig) -> InstanceLock:
    """Take this heald's locks on ``config``'s state directory and database (creating the
    state directory 0700 if needed). Raises AlreadyRunning, with nothing held, when another
    heald holds one; other errors (an unreachable database) propagate, also with nothing held."""
    lock = InstanceLock()
    try:
        private_dir(config.state_dir)
        lock._lock_file(config.state_dir / "heald.lock", f"the state directory {config.state_dir}")
        url = config.database
        if is_sqlite(normalize_url(url)):
            db = sa.make_url(url).database
            if db and db != ":memory:" and not db.startswith("file:"):
                path = Path(db).resolve()
                if not path.parent.exists():
                    private_dir(path.parent)
                # also inside the state directory: another heald with another state_dir may name this file
                lock._lock_file(path.with_name(path.name + ".heald-lock"),
                                f"the SQLite database {path} (SQLite serves one heald process only; for several "
                                "workers use a PostgreSQL database_url with database_lock: false, see docs/deploy.md)")
        elif config.database_lock:
            lock._lock_postgres(url)
    except BaseException:
        lock.release()
        raise
    return lock
