"""Shared fixtures: real SQLite files, a real PostgreSQL database per test, real HTTP servers
and real heald runtimes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from heald.config import HealdConfig
from heald.engine import Runtime
from heald.store import Store
from heald.store.db import normalize_url

_EXIT_STATUS = pytest.StashKey[int]()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
POSTGRES_URL = os.environ.get("HEALD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


#: DBOS's look for messages to waiting healings on SQLite in the test process (seconds), in
#: place of heald's 2 s (``SQLITE_NOTIFICATION_POLL_SECONDS``): DBOS sleeps that long between
#: looks in a thread that ``DBOS.destroy`` joins, so each Runtime's stop waited up to 2 s (about
#: 1 s on average, for some 300 tests). A message heald sends itself wakes its waiter at once
#: either way; the test that proves so sets its own interval (a minute).
TEST_NOTIFICATION_POLL_SECONDS = 0.1


@pytest.fixture(autouse=True, scope="session")
def _quick_dbos_notification_poll() -> Iterator[None]:
    import importlib

    runtime_module = importlib.import_module("heald.engine.runtime")  # heald.engine.runtime is also a function
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime_module, "SQLITE_NOTIFICATION_POLL_SECONDS", TEST_NOTIFICATION_POLL_SECONDS)
        yield


@pytest.fixture(autouse=True)
def _pg_databases_to_drop() -> Iterator[list[str]]:
    """The PostgreSQL databases :func:`pg_url` made for this test, dropped once every other
    fixture of the test is torn down. An autouse fixture is set up first, so torn down last:
    a Runtime a test started before it asked for ``pg_url`` (``start_runtime``, ``api_server``,
    ``request.getfixturevalue("pg_url")`` inside the test) is stopped before its database goes;
    dropped under it, its stop retried the lost connections for seconds."""
    names: list[str] = []
    yield names
    if names:
        admin = sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for name in names:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@pytest.fixture
def pg_url(_pg_databases_to_drop: list[str]) -> str:
    """A fresh, empty PostgreSQL database on the test server, dropped after the test (see
    :func:`_pg_databases_to_drop`).

    Fails (does not skip) when the server does not answer: CI must run these. Set
    HEALD_TEST_POSTGRES_URL=none to skip them deliberately on a machine without PostgreSQL.
    """
    if POSTGRES_URL == "none":
        pytest.skip("HEALD_TEST_POSTGRES_URL=none: PostgreSQL tests deliberately skipped")
    admin = sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"heald_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    _pg_databases_to_drop.append(name)
    return sa.make_url(normalize_url(POSTGRES_URL)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store URL, once for a SQLite file and once for a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'heald.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


def free_port() -> int:
    from heald.demo.runner import free_port as fp

    return fp()


class Switchable:
    """A real HTTP server on loopback whose answer a test can switch (status code)."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                self.send_response(outer.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/healthz"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_target() -> Iterator[Switchable]:
    t = Switchable()
    yield t
    t.close()


#: ``services.<name>.start_period_seconds`` of a managed service in :func:`make_config` unless
#: the test sets its own (heald's default is 3 s): every restart watches the new instance this
#: long, and the tests' services exit within milliseconds when they fail to start. As the
#: scenario harness (tests/scenarios/conftest.py).
TEST_START_PERIOD_SECONDS = 1.0


def make_config(tmp_path: Path, **data: object) -> HealdConfig:
    """A validated HealdConfig with state under ``tmp_path`` and fast healing timings (and a
    start period of :data:`TEST_START_PERIOD_SECONDS` for managed services that set none)."""
    base: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "healing": {"group_wait_seconds": 0.05, "retry_delay_seconds": 0.2, "stabilization_seconds": 0.3,
                    "verify_interval_seconds": 0.05, "verify_timeout_seconds": 3.0},
    }
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}  # type: ignore[dict-item]
        else:
            base[k] = v
    services = base.get("services")
    if isinstance(services, dict):
        base["services"] = {name: {"start_period_seconds": TEST_START_PERIOD_SECONDS, **svc}
                            if isinstance(svc, dict) and svc.get("command") else svc
                            for name, svc in services.items()}
    cfg = HealdConfig.model_validate(base)
    cfg.resolve_paths(tmp_path)
    return cfg


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; return it. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def make_token(store: Store, role: str, name: str | None = None) -> str:
    """Create an API token with ``role`` (identity ``name``, default ``<role>-user``) in
    ``store``; returns the token for an ``Authorization: Bearer`` header."""
    from heald.auth import issue_token
    from heald.models import Role

    _, token = issue_token(store, name=name or f"{role}-user", role=Role(role), created_by="test",
                           sponsor=None)  # a root identity: a distinct human, as made on the database host
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def heald_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "heald.cli", *args]


def run_heald(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(heald_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A fresh directory that every user can traverse (mode 0755, under the system's temp dir),
    removed afterwards: the sandbox's unprivileged user must reach work trees, and pytest's own
    ``tmp_path`` is private (0700) when the suite runs as root."""
    import shutil
    import tempfile

    from heald.sandbox.disk import release_under

    path = Path(tempfile.mkdtemp(prefix="heald-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        release_under(path)  # work trees the sandbox gave a filesystem of their own
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def serving(rt: Runtime, role: str | None = "admin", name: str = "root") -> Iterator[httpx.Client]:
    """heald's HTTP API over ``rt`` on a free loopback port (uvicorn in a thread), and a client
    for it that sends a bearer token of ``role`` (identity ``name``; None: no token); the
    server stops when the block ends."""
    import uvicorn

    from heald.api.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="uvicorn")
    headers = bearer(make_token(rt.store, role, name)) if role else {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10, headers=headers) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's own exit status once everything is reported: workflow
    threads that tests leave in a ``DBOS.sleep`` (which nothing can wake) would otherwise hold
    the interpreter's exit for as long as they sleep."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


@pytest.fixture
def start_runtime() -> Iterator[Callable[..., Runtime]]:
    """Start a real heald Runtime: ``start(cfg, **Runtime keyword flags)`` returns it started
    (DBOS on SQLite files under the test's tmp_path); every one started is stopped, its
    managed services too, when the test ends."""
    started: list[Runtime] = []

    def start(cfg: HealdConfig, **kw: bool) -> Runtime:
        rt = Runtime(cfg, **kw)
        rt.start()
        started.append(rt)
        return rt

    yield start
    for rt in started:
        rt.stop(stop_services=True)
