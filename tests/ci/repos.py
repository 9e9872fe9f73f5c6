"""Small real git repositories of pure-Python projects with real test suites, built per test:
a history of ordinary changes with one breaking commit, a dropped dependency, a lint error, a
test that never passed, a flaky test."""

from __future__ import annotations

import subprocess
from pathlib import Path

PYPROJECT = """[project]
name = "calc"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = [{deps}]

[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[tool.setuptools]
py-modules = ["calc"]

[tool.pytest.ini_options]
testpaths = ["tests"]
{extra}"""

CALC = '''"""A tiny calculator."""


def add(a, b):
    return a + b


def mul(a, b):
    return a * b
'''

TESTS = '''from calc import add, mul


def test_add():
    assert add(2, 3) == 5


def test_mul():
    assert mul(2, 3) == 6
'''


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def commit(repo: Path, message: str, files: dict[str, str | None], author: str = "Dev One <dev@example.com>") -> str:
    """Write (or, with None, delete) files and commit them; returns the new sha."""
    for name, text in files.items():
        p = repo / name
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    sh("git", "add", "-A", cwd=repo)
    name, email = author[:-1].split(" <")
    sh("git", "-c", f"user.name={name}", "-c", f"user.email={email}", "commit", "-q", "-m", message, cwd=repo)
    return sh("git", "rev-parse", "HEAD", cwd=repo).strip()


def new_repo(path: Path, *, deps: str = "", extra: str = "", calc: str = CALC, tests: str = TESTS) -> tuple[Path, str]:
    """A repository with a working calculator project; returns (its path, the first commit)."""
    path.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=path)
    first = commit(path, "Start the calculator", {"pyproject.toml": PYPROJECT.format(deps=deps, extra=extra),
                                                   "calc.py": calc, "tests/test_calc.py": tests})
    return path, first


def history(repo: Path, n: int, start: int = 0) -> list[str]:
    """``n`` harmless commits (new functions with their tests)."""
    shas = []
    for i in range(start, start + n):
        shas.append(commit(repo, f"Add helper f{i}", {f"helpers/h{i}.py": f"def f{i}():\n    return {i}\n"}))
    return shas


def bare_remote(repo: Path, where: Path) -> Path:
    """A bare clone of ``repo`` acting as its remote (origin)."""
    sh("git", "clone", "-q", "--bare", str(repo), str(where), cwd=repo.parent)
    return where


# -- the four cases of the issue, as (repository, what heald should do) -------------------------

def culprit_case(path: Path) -> tuple[Path, str]:
    """Tests pass for a while, then a commit breaks add(); returns (repo, culprit sha)."""
    repo, _ = new_repo(path)
    history(repo, 4)
    culprit = commit(repo, "Make add faster", {"calc.py": CALC.replace("return a + b", "return a - b")},
                     author="Eve Breaker <eve@example.com>")
    history(repo, 3, start=10)
    return repo, culprit


def dropped_dependency_case(path: Path) -> Path:
    """calc imports six; a later commit drops six from the dependencies."""
    calc = CALC.replace('"""A tiny calculator."""\n', '"""A tiny calculator."""\nimport six\n')
    repo, _ = new_repo(path, deps='"six>=1.10"', calc=calc)
    history(repo, 2)
    commit(repo, "Trim dependencies", {"pyproject.toml": PYPROJECT.format(deps="", extra="")})
    return repo


def lint_case(path: Path) -> Path:
    """A project checked by ruff; a commit adds an unused import (F401)."""
    repo, _ = new_repo(path, extra="\n[tool.ruff]\nline-length = 100\n")
    history(repo, 2)
    commit(repo, "Add a helper", {"calc.py": "import os\n" + CALC + "\n\ndef sub(a, b):\n    return a - b\n"})
    return repo


def red_everywhere_case(path: Path) -> Path:
    """A test that fails on every commit, because of the environment (the Python version)."""
    tests = TESTS + "\n\ndef test_old_python():\n    import sys\n    assert sys.version_info < (3, 8)\n"
    repo, _ = new_repo(path, tests=tests)
    history(repo, 6)
    return repo
