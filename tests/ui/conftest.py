"""The dashboard under test: a real heald Runtime (engine, a managed process, SQLite files)
behind uvicorn on loopback, and Debian's Chromium driven by Playwright.

``HEALD_SCREENSHOTS=<dir>`` keeps the screenshots there (default: the test's tmp_path).
``HEALD_TEST_BROWSER=none`` skips the browser tests deliberately; otherwise a missing
Chromium fails them (CI must run them).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from heald.api.server import ServerThread
from heald.config import HealdConfig
from heald.engine import Runtime
from tests.conftest import bearer, free_port, make_config, make_token, wait_for
from tests.engine.test_workflow import runbook

CHROMIUM = os.environ.get("HEALD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIGNAL = {"source": "my-monitor", "service": "svc", "summary": "svc broken",
          "labels": {"alertname": "SvcBroken", "service": "svc"}}


@dataclass
class Dashboard:
    """A served heald: ``url``, the runtime, and a token per role (identity ``<role>-user``)."""

    url: str
    rt: Runtime
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, role: str = "operator") -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=bearer(self.tokens[role]), timeout=10)

    def send_signal(self, **overrides: Any) -> int:
        """POST a signal through the API (operator token); returns its incident id."""
        with self.api() as client:
            r = client.post("/v1/signals", json={**SIGNAL, **overrides})
        assert r.status_code == 202, r.text
        return int(r.json()["incident_id"])

    def state(self, incident_id: int) -> str:
        return self.rt.store.get_incident(incident_id).state.value

    def wait_state(self, incident_id: int, state: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.state(incident_id) == state, timeout=timeout,
                 what=f"incident {incident_id} to be {state} (it is {self.state(incident_id)})")


def ui_config(tmp_path: Path) -> HealdConfig:
    """A managed service ``svc`` (the demo's shop, a real HTTP server process) whose health
    probe verifies a healing, and a medium-risk restart runbook for it (the gate asks for one
    approval). Probes do not run on their own: the tests send the signals."""
    port = free_port()
    return make_config(tmp_path, services={"svc": {
        "command": [sys.executable, "-m", "heald.demo.shop", "--port", str(port),
                    "--starts-file", str(tmp_path / "starts")],
        "probes": [{"url": f"http://127.0.0.1:{port}/healthz", "interval_seconds": 0.1, "timeout_seconds": 1.0}]}},
        runbooks=[str(runbook(tmp_path, risk="medium"))])


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """heald served on a free loopback port over a Runtime with the engine (SQLite files under
    ``tmp_path``), see :func:`ui_config`."""
    rt = Runtime(ui_config(tmp_path), run_probes=False)
    rt.start()
    wait_for(lambda: (tmp_path / "starts").exists(), what="the svc process to start")
    server = ServerThread(rt)
    try:
        url = server.start()
        tokens = {role: make_token(rt.store, role) for role in ("viewer", "operator", "approver", "admin")}
        yield Dashboard(url, rt, tokens)
    finally:
        server.stop()
        rt.stop(stop_services=True)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    d = Path(os.environ["HEALD_SCREENSHOTS"]) if os.environ.get("HEALD_SCREENSHOTS") else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright."""
    with launch_chromium() as browser:
        yield browser


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """Start Debian's Chromium headless through Playwright's sync API; stops it (and the event
    loop Playwright keeps running on the main thread) on exit."""
    if os.environ.get("HEALD_TEST_BROWSER") == "none":
        pytest.skip("HEALD_TEST_BROWSER=none: browser tests deliberately skipped")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/apt-packages.txt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """Errors the page reports: console messages of type error and uncaught exceptions."""

    def __init__(self, page: Any):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text} at {m.location}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    """A factory: ``browser_page(javascript=True)`` → (page, console) in a fresh context."""
    contexts: list[Any] = []

    def make(javascript: bool = True) -> tuple[Any, Console]:
        context = chromium.new_context(java_script_enabled=javascript, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        return page, Console(page)

    yield make
    for c in contexts:
        c.close()


def sign_in(page: Any, url: str, token: str, next_path: str = "/") -> None:
    """Sign in through the login form (labelled field, submit button)."""
    page.goto(f"{url}{next_path}")
    assert "/login" in page.url, page.url
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}{next_path}")
