"""The API under test: a real heald Runtime behind uvicorn on loopback, httpx as the client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from heald.api.app import create_app
from heald.config import HealdConfig
from heald.engine import Runtime
from tests.conftest import bearer, free_port, make_config, make_token, wait_for
from tests.engine.test_workflow import runbook


@contextmanager
def serve(cfg: HealdConfig, headers: dict[str, str] | None = None,
          token_role: str | None = "admin") -> Iterator[tuple[httpx.Client, Runtime]]:
    """Start a Runtime for ``cfg`` and the API over it; yield an httpx client (with a bearer
    token of ``token_role``, identity ``root``, unless None) and the runtime."""
    rt = Runtime(cfg, run_probes=False)
    rt.start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn")
        default = bearer(make_token(rt.store, token_role, "root")) if token_role else {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers={**default, **(headers or {})}) as client:
            yield client, rt
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        rt.stop(stop_services=True)


def api_config(tmp_path: Path, **data: Any) -> HealdConfig:
    """The API tests' configuration: one managed service and a medium-risk runbook for it."""
    return make_config(tmp_path, services={"svc": {"command": ["sleep", "600"]}},
                       runbooks=[str(runbook(tmp_path, risk="medium"))], **data)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, Runtime]]:
    """(client with an admin token, runtime)."""
    with serve(api_config(tmp_path)) as pair:
        yield pair


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A factory: ``api_server(**config)`` starts the API with extra configuration."""
    stack: list[Any] = []

    def start(token_role: str | None = "admin", **data: Any) -> tuple[httpx.Client, Runtime]:
        cm = serve(api_config(tmp_path, **data), token_role=token_role)
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
