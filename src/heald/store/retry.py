"""Transient database errors: which they are, and retrying the work they interrupted.

A transient error is one where the database rolled the transaction back and the same work,
run again, can succeed: PostgreSQL's deadlock detected (SQLSTATE ``40P01``), serialization
failure (``40001``), lock timeout (``55P03``), a dropped or terminated connection (class ``08``,
``57P01`` administrator command such as ``pg_terminate_backend``, ``57P02``/``57P03``, "server
closed the connection unexpectedly", a connection SQLAlchemy invalidated), too many
connections (class ``53``); SQLite's "database is locked" / "database is busy".
:func:`is_transient` is the one classifier; :func:`retry_transient` reruns a function (a whole
transaction, a DBOS step) on such an error, a bounded number of times with jittered
exponential back-off (tenacity). Anything else is raised at once.

When the retries are spent the last error is raised as :class:`TransientDatabaseError` (still
a ``DBAPIError`` underneath, as ``__cause__``), which the API answers with 503 and
``Retry-After`` (never a 500).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import exc as sa_exc
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_random_exponential,
)

log = logging.getLogger("heald.store.retry")

P = ParamSpec("P")
T = TypeVar("T")

#: SQLSTATEs whose transaction was rolled back by the server and may simply be run again.
_RETRY_SQLSTATES = frozenset({"40P01", "40001", "55P03", "57P01", "57P02", "57P03", "25P03"})
_RETRY_SQLSTATE_CLASSES = ("08", "53")
#: Driver messages of a connection that went away (psycopg gives no SQLSTATE for these).
_CONNECTION_LOST = ("server closed the connection unexpectedly", "terminating connection",
                    "connection is closed", "consuming input failed", "connection failed",
                    "ssl connection has been closed unexpectedly", "the connection is lost")
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
#: PostgreSQL refusing a new connection because its slots are taken (SQLSTATE ``53300``
#: too_many_connections; libpq reports it at connect time as a message without a SQLSTATE).
_NO_SLOT_SQLSTATE = "53300"
_NO_SLOT = ("too many clients already", "remaining connection slots are reserved",
            "too many connections for role", "too many connections for database")

#: Default bounds: attempts and wall-clock seconds (whichever comes first), back-off cap (s).
ATTEMPTS = 8
MAX_SECONDS = 30.0
MAX_WAIT = 2.0


class TransientDatabaseError(RuntimeError):
    """A transient database error that outlived its retries (the original is ``__cause__``):
    the database is contended or unreachable for now; the request may be retried later."""


def _chain(exc: BaseException) -> Iterator[tuple[BaseException, BaseException | None]]:
    """``exc`` and each error it wraps (``__cause__``, else ``__context__``), once each, as
    (error, the driver's error under it: ``orig`` of a SQLAlchemy ``DBAPIError``, possibly None,
    else itself)."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err, (err.orig if isinstance(err, sa_exc.DBAPIError) else err)
        err = err.__cause__ or err.__context__


def _sqlstate(orig: BaseException | None) -> object:
    """The SQLSTATE a driver error carries (psycopg ``sqlstate``, psycopg2 ``pgcode``), else None."""
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it wraps) is a transient database error (see the module
    docstring): the transaction was rolled back and running it again may succeed."""
    for err, orig in _chain(exc):
        if isinstance(err, TransientDatabaseError):
            return True
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, sa_exc.TimeoutError):  # no pooled connection free in time
            return True
        sqlstate = _sqlstate(orig)
        if isinstance(sqlstate, str) and (sqlstate in _RETRY_SQLSTATES or sqlstate.startswith(_RETRY_SQLSTATE_CLASSES)):
            return True
        if isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError) or type(orig).__name__ in (
                "OperationalError", "InterfaceError"):
            text = str(orig).lower()
            if any(m in text for m in _CONNECTION_LOST) or any(m in text for m in _SQLITE_BUSY):
                return True
    return False


def waited_for_connection(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it wraps) says no connection could be had: SQLAlchemy's
    pool ``TimeoutError`` ("QueuePool limit … reached"), or PostgreSQL refusing a new connection
    because its connection slots are taken (``53300``: "sorry, too many clients already", a
    role's or database's ``CONNECTION LIMIT``). Nothing was sent to the database — running the
    work again is always safe, and waiting longer is the remedy (with 200 healings at once, the
    store's and DBOS's pools together may ask for more connections than ``max_connections``)."""
    for err, orig in _chain(exc):
        if isinstance(err, sa_exc.TimeoutError) or _sqlstate(orig) == _NO_SLOT_SQLSTATE:
            return True
        if type(orig).__name__ == "OperationalError" and any(m in str(orig).lower() for m in _NO_SLOT):
            return True
    return False


class _Stop:
    """tenacity's stop condition of :func:`retrying`: ``attempts`` runs and ``max_seconds`` for
    the transient errors of a database that answered; a wait for a pooled connection
    (:func:`waited_for_connection`) is not counted as an attempt and is bounded by
    ``pool_wait_seconds`` (from the first run) instead."""

    def __init__(self, attempts: int, max_seconds: float, pool_wait_seconds: float):
        self.attempts, self.max_seconds, self.pool_wait_seconds = attempts, max_seconds, pool_wait_seconds
        self.failures = 0  # runs that failed other than on a pool wait

    def __call__(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        elapsed = state.seconds_since_start or 0.0
        if exc is not None and waited_for_connection(exc):
            return elapsed >= max(self.pool_wait_seconds, self.max_seconds)
        self.failures += 1
        return self.failures >= self.attempts or elapsed >= self.max_seconds


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    fn = getattr(state.fn, "__qualname__", "?")
    log.warning("transient database error in %s (attempt %d), retrying: %s", fn, state.attempt_number,
                str(exc).splitlines()[0][:200] if exc else "")


def retrying(attempts: int = ATTEMPTS, max_seconds: float = MAX_SECONDS, max_wait: float = MAX_WAIT,
             pool_wait_seconds: float = 0.0) -> Retrying:
    """A tenacity ``Retrying`` that reruns on a transient error only: at most ``attempts`` runs
    and ``max_seconds`` seconds, waiting a random 0..min(max_wait, 0.05·2ⁿ) s between them
    (full jitter, so contending writers spread out). Waiting for a pooled connection that
    timed out (:func:`waited_for_connection`) is no attempt: it is waited again for up to
    ``pool_wait_seconds`` in all (at least ``max_seconds``). Re-raises the last error itself."""
    return Retrying(retry=retry_if_exception(is_transient),
                    stop=_Stop(attempts, max_seconds, pool_wait_seconds),
                    wait=wait_random_exponential(multiplier=0.05, max=max_wait),
                    before_sleep=_log_retry, reraise=True)


#: True while this thread runs inside one of the store's transactions (:meth:`heald.store.Store.tx`
#: or :meth:`~heald.store.Store.read`): the store's work called there joins that transaction, so
#: a transient error must end it whole and be retried by whoever opened it, not rerun a part
#: of it on a connection that has rolled back.
_INSIDE: ContextVar[bool] = ContextVar("heald.store.inside_transaction", default=False)


@contextmanager
def inside_transaction() -> Iterator[None]:
    """Mark this thread as running inside a transaction (see :data:`_INSIDE`) for the block:
    :func:`retry_transient` functions called in it run once, their errors go up to the
    transaction's opener."""
    token = _INSIDE.set(True)
    try:
        yield
    finally:
        _INSIDE.reset(token)


def retry_transient(fn: Callable[P, T] | None = None, *, attempts: int = ATTEMPTS,
                    max_seconds: float = MAX_SECONDS, pool_wait_seconds: float = 0.0) -> Any:
    """Decorator: run ``fn`` again on a transient database error (see :func:`retrying`). Use it
    on work that is safe to run again after a rollback: one whole transaction, or a step whose
    transactions are each idempotent. When the retries are spent raises
    :class:`TransientDatabaseError` from the last error. Inside a transaction of the store
    (:func:`inside_transaction`) ``fn`` runs once: the transaction's opener retries it whole."""
    def wrap(f: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(f)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if _INSIDE.get():
                return f(*args, **kwargs)
            try:
                for attempt in retrying(attempts, max_seconds, pool_wait_seconds=pool_wait_seconds):
                    with attempt:
                        return f(*args, **kwargs)
            except Exception as exc:
                if is_transient(exc) and not isinstance(exc, TransientDatabaseError):
                    raise TransientDatabaseError(
                        f"the database stayed busy or unreachable after retries: {str(exc).splitlines()[0][:300]}"
                    ) from exc
                raise
            raise AssertionError("unreachable")  # pragma: no cover - Retrying always returns or raises
        return wrapper

    return wrap(fn) if fn is not None else wrap
