"""Fixtures for CI healing: a shared pip cache (so the suite downloads pytest and friends once),
a heald configuration for a test, the fake GitHub API, the real runtime, and the forward-fix
cases' project (a repository whose new test exposes an old bug) with the answer that fixes it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from heald.config import HealdConfig
from tests.ci.fake_chat import FakeChat
from tests.ci.fake_github import FakeGitHub
from tests.ci.repos import PYPROJECT, bare_remote, commit, sh
from tests.conftest import make_config

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


STATS = '''"""Small statistics."""


def total(xs):
    return sum(xs)


def mean(xs):
    return total(xs) // len(xs)
'''

_STATS_TESTS = '''from stats import mean, total


def test_total():
    assert total([1, 2, 3]) == 6


def test_mean_of_evens():
    assert mean([2, 4]) == 3
'''

_STATS_NEW_TEST = _STATS_TESTS + '''

def test_mean_is_exact():
    assert mean([1, 2]) == 1.5
'''

FAILING = "tests/test_stats.py::test_mean_is_exact"


def answer(*edits: tuple[str, str, str], why: str = "mean divides with //, which truncates") -> str:
    """A model's forward-fix answer (JSON): an explanation and (path, search, replace) edits."""
    return json.dumps({"explanation": why, "edits": [{"path": p, "search": s, "replace": r} for p, s, r in edits]})


CORRECT = answer(("stats.py", "return total(xs) // len(xs)", "return total(xs) / len(xs)"))


@pytest.fixture
def project(open_tmp: Path) -> tuple[Path, str]:
    """A repository whose last commit adds a test exposing an old bug (mean truncates); a bare
    clone is its remote. Returns (remote, failing sha)."""
    repo = open_tmp / "stats"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    pyproject = PYPROJECT.format(deps="", extra="").replace('name = "calc"', 'name = "stats"').replace(
        'py-modules = ["calc"]', 'py-modules = ["stats"]')
    commit(repo, "Start", {"pyproject.toml": pyproject, "stats.py": STATS, "tests/test_stats.py": _STATS_TESTS})
    commit(repo, "Docs", {"README.md": "stats\n"})
    bad = commit(repo, "Test that mean is exact", {"tests/test_stats.py": _STATS_NEW_TEST})
    return bare_remote(repo, open_tmp / "stats.git"), bad


def config_for(open_tmp: Path, pip_cache: Path, chat: FakeChat | None, **ci: object) -> HealdConfig:
    """A configuration for the forward-fix cases: the chat server as the LLM endpoint (none
    without it), CI work under ``open_tmp``; ``ci`` keywords are merged into ``ci``."""
    llm: dict[str, object] = {"base_url": chat.url, "model": "recorded-model", "api_key": "k", "timeout_seconds": 20,
                              "max_retries": 0, "input_cost_per_million": 2.0, "output_cost_per_million": 8.0} \
        if chat else {}
    return make_config(open_tmp, llm=llm, ci={"work_dir": str(open_tmp / "ci"), "pip_cache_dir": str(pip_cache), **ci})
