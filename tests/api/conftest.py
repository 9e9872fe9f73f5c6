"""The API under test: a real heald Runtime behind uvicorn on loopback, httpx as the client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from heald.config import HealdConfig
from heald.engine import Runtime
from tests.conftest import make_config, serving
from tests.engine.test_workflow import runbook


@contextmanager
def serve(cfg: HealdConfig, token_role: str | None = "admin") -> Iterator[tuple[httpx.Client, Runtime]]:
    """Start a Runtime for ``cfg`` and the API over it; yield an httpx client (with a bearer
    token of ``token_role``, identity ``root``, unless None) and the runtime."""
    rt = Runtime(cfg, run_probes=False)
    rt.start()
    try:
        with serving(rt, token_role) as client:
            yield client, rt
    finally:
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
