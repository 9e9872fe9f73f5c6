"""Database engines for heald's store: a SQLite file (WAL mode) by default, PostgreSQL by URL.

SQLite transactions begin with ``BEGIN IMMEDIATE`` so that writers serialize instead of failing
on a lock upgrade; PostgreSQL writers that must serialize (the audit chain, correlation) take
a transaction-scoped advisory lock through :func:`lock`.
"""

from __future__ import annotations

import hashlib
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


def create_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``. For SQLite: the parent directory is created (0700), the
    database file is 0600 (see :func:`_private_database_file`), WAL mode and a 30 s busy
    timeout are set, and every transaction is ``BEGIN IMMEDIATE``."""
    url = normalize_url(url)
    if is_sqlite(url):
        db_path = sa.make_url(url).database
        if db_path and db_path != ":memory:" and not db_path.startswith("file:"):
            _private_database_file(Path(db_path))
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take over transaction control from pysqlite so BEGIN IMMEDIATE can be issued.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def lock(session: Session, name: str) -> None:
    """Serialize writers on ``name`` until the transaction ends.

    PostgreSQL: ``pg_advisory_xact_lock``; SQLite: nothing to do (``BEGIN IMMEDIATE`` already
    holds the database's single write lock).
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
