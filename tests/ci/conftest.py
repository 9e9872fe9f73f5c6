"""Fixtures for CI healing: a shared pip cache (so the suite downloads pytest and friends once),
a heald configuration for a test, the fake GitHub API."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.ci.fake_github import FakeGitHub

TOKEN = "ghp_test_token_for_the_fake_api"


@pytest.fixture(scope="session")
def pip_cache() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="heald-test-pip-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def heald_yaml(open_tmp: Path, pip_cache: Path) -> Callable[..., Path]:
    """Write a heald.yaml for this test (state and CI work under ``open_tmp``); keyword
    arguments are merged into it."""
    def write(**extra: object) -> Path:
        data: dict[str, object] = {
            "state_dir": str(open_tmp / "state"),
            "healing": {"group_wait_seconds": 0.05, "retry_delay_seconds": 0.1, "max_attempts": 2},
            "ci": {"work_dir": str(open_tmp / "ci"), "pip_cache_dir": str(pip_cache)},
        }
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}  # type: ignore[dict-item]
            else:
                data[k] = v
        path = open_tmp / "heald.yaml"
        path.write_text(yaml.safe_dump(data))
        return path
    return write


@pytest.fixture
def fake_github() -> Iterator[Callable[[dict[str, Path]], FakeGitHub]]:
    servers: list[FakeGitHub] = []

    def start(repos: dict[str, Path]) -> FakeGitHub:
        s = FakeGitHub(TOKEN, repos)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
