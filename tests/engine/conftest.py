from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from heald.config import HealdConfig
from heald.engine import Runtime


@pytest.fixture
def start_runtime() -> Iterator[Callable[..., Runtime]]:
    """Start a real heald Runtime (DBOS on SQLite files under the test's tmp_path)."""
    started: list[Runtime] = []

    def start(cfg: HealdConfig, **kw: bool) -> Runtime:
        rt = Runtime(cfg, **kw)
        rt.start()
        started.append(rt)
        return rt

    yield start
    for rt in started:
        rt.stop(stop_services=True)
