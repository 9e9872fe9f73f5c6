"""Healing CI on repositories as they are: failures judged test by test against a baseline,
heald kept out of the project's tree, a writable HOME, timeouts, the quarantine, --dry-run and
bad input — each on a small real git repository built here, through ``heald heal-ci`` and the
real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ci.repos import CALC, TESTS, commit, history, new_repo, sh
from tests.conftest import run_heald

pytestmark = pytest.mark.slow

#: tests a real project has that fail in heald's sandbox at every commit, or that would fail
#: if heald's files were inside the tree or HOME were not writable
ENV_TESTS = '''import os
import pwd
import socket
from pathlib import Path


def test_needs_the_network():
    socket.create_connection(("pypi.org", 443), timeout=3).close()


def test_tree_has_no_foreign_files():
    for root, dirs, files in os.walk("."):
        dirs[:] = [d for d in dirs if d != ".git"]
        assert "site-packages" not in root and "pyvenv.cfg" not in files, root


def test_home_is_writable():
    for home in (Path.home(), Path(pwd.getpwuid(os.getuid()).pw_dir)):
        (home / ".config").mkdir(parents=True, exist_ok=True)
        (home / ".config" / "tool.ini").write_text("x")
'''


def heal(config: Path, repo: Path, *args: str, timeout: float = 600) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    r = run_heald("--config", str(config), "heal-ci", "--repo", str(repo), "--json", *args,
                  env={"GITHUB_TOKEN": ""}, timeout=timeout)
    try:
        return r.returncode, json.loads(r.stdout), r.stderr
    except json.JSONDecodeError:
        pytest.fail(f"heal-ci printed no JSON (exit {r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}")


def branches(repo: Path) -> str:
    return sh("git", "for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=repo)


def test_an_environment_failure_does_not_hide_the_regression(open_tmp: Path, heald_yaml) -> None:
    """thefuck-1: tests that fail at every commit in the sandbox (the network) are the baseline;
    the one a commit broke is found and its culprit reverted. heald's venv is not in the tree
    (a test walking it passes), HOME is writable (by $HOME and by the password database).
    --dry-run validates the revert and pushes nothing."""
    repo, first = new_repo(open_tmp / "calc", tests=TESTS)
    commit(repo, "Add environment tests", {"tests/test_env.py": ENV_TESTS})
    history(repo, 3)
    culprit = commit(repo, "Make add faster", {"calc.py": CALC.replace("return a + b", "return a - b")},
                     author="Eve Breaker <eve@example.com>")
    history(repo, 2, start=10)
    before = branches(repo)
    code, d, err = heal(heald_yaml(), repo, "--bad", "main", "--dry-run")
    assert code == 0, err[-3000:]
    assert d["verdict"] == "regression" and d["culprit"]["sha"] == culprit, d["summary"]
    assert d["outcome"] == "fix_validated_dry_run" and d["dry_run"] and d["fix_sha"] and d["branch"] is None
    assert branches(repo) == before  # nothing pushed
    esc = d["escalation"]
    assert [t["id"] for t in esc["failing_tests"] if t.get("baseline")] == ["tests/test_env.py::test_needs_the_network"]
    assert "test_tree_has_no_foreign_files" not in json.dumps(esc) and "test_home_is_writable" not in json.dumps(esc)
    assert esc["suspects"][0]["path"] == "calc.py" and culprit[:12] in esc["suspects"][0]["why"]
    assert d["test_command_source"] == "pytest configuration in pyproject.toml [tool.pytest.ini_options]"


def test_red_everywhere_names_the_tests_and_keeps_every_steps_log(open_tmp: Path, heald_yaml) -> None:
    """Only baseline failures (and a quarantined test): escalated, with the failing tests, their
    exceptions, and each step's command, exit and output in the incident."""
    tests = TESTS + "\n\ndef test_flaky_upstream():\n    assert False, 'upstream is down'\n"
    repo, _ = new_repo(open_tmp / "calc", tests=tests)
    good = commit(repo, "Add environment tests", {"tests/test_env.py": ENV_TESTS})
    history(repo, 2)
    code, d, err = heal(heald_yaml(), repo, "--bad", "main", "--good", good,
                        "--quarantine", "tests/test_calc.py::test_flaky_upstream")
    assert code == 1 and d["verdict"] == "red_everywhere", err[-3000:]
    failing = {t["id"]: t for t in d["escalation"]["failing_tests"]}
    assert failing["tests/test_env.py::test_needs_the_network"]["error"].startswith(("OSError", "socket.gaierror"))
    assert failing["tests/test_calc.py::test_flaky_upstream"].get("quarantined")
    from heald.ci.incident import investigation_data, reproduction
    from heald.config import load_config
    from heald.store import Store

    store = Store(load_config(heald_yaml()).database)
    try:
        inv = investigation_data(reproduction(store.signals_for(d["incident_id"])))
    finally:
        store.close()
    phases = [s["phase"] for s in inv["steps"]]
    assert phases[:2] == ["install", "reproduce"] and "baseline" in phases
    reproduce = inv["steps"][1]
    assert reproduce["exit"] == 1 and "test_needs_the_network" in reproduce["output"] and reproduce["duration_s"] > 0


def test_a_hanging_test_is_killed_and_reported_not_rerun(open_tmp: Path, heald_yaml) -> None:
    """A test that hangs fails alone by the per-test timeout (pytest-timeout) and is named; a
    run the per-run timeout kills is reported as a hang and not re-run."""
    hang = TESTS + "\n\ndef test_hangs():\n    import time\n    time.sleep(3600)\n"
    repo, first = new_repo(open_tmp / "calc")
    history(repo, 2)
    commit(repo, "Add a slow test", {"tests/test_calc.py": hang})
    code, d, err = heal(heald_yaml(ci={"test_timeout_seconds": 3}), repo, "--bad", "main", "--good", first)
    assert code == 1 and d["verdict"] == "never_passed", err[-3000:]
    assert [t["id"] for t in d["escalation"]["failing_tests"]] == ["tests/test_calc.py::test_hangs"]
    assert "Timeout" in d["escalation"]["failing_tests"][0]["error"]
    other = open_tmp / "calc2"  # another repository name: a new incident, not the open one
    sh("git", "clone", "-q", str(repo), str(other), cwd=open_tmp)
    code, d, err = heal(heald_yaml(ci={"test_timeout_seconds": 600, "check_timeout_seconds": 20}), other,
                        "--bad", "main", "--good", first)
    assert code == 1 and d["verdict"] == "hang" and d["category"] == "ci_timeout", err[-3000:]
    assert "killed by the per-run timeout" in d["summary"] and d["test_runs"] == 1  # no re-run of a hang


def test_a_good_that_is_not_an_ancestor_is_bad_input(open_tmp: Path, heald_yaml) -> None:
    repo, first = new_repo(open_tmp / "calc")
    later = history(repo, 2)[-1]
    sh("git", "checkout", "-q", "-b", "side", first, cwd=repo)
    side = commit(repo, "Elsewhere", {"README": "x\n"})
    sh("git", "checkout", "-q", "main", cwd=repo)
    r = run_heald("--config", str(heald_yaml()), "heal-ci", "--repo", str(repo), "--bad", later, "--good", side)
    assert r.returncode == 2 and "--good" in r.stderr and "not an ancestor" in r.stderr
    assert not (open_tmp / "ci" / "trees").exists() or not any((open_tmp / "ci" / "trees").iterdir())


def test_every_check_passing_is_not_reproduced_not_flaky(open_tmp: Path, heald_yaml) -> None:
    repo, _ = new_repo(open_tmp / "calc")
    code, d, err = heal(heald_yaml(), repo, "--bad", "main")
    assert code == 1 and d["verdict"] == "not_reproduced", err[-3000:]
    assert d["category"] == "not_reproduced"  # no test was seen both failing and passing


def test_a_dependency_heald_cannot_declare_is_said_once_not_retried(open_tmp: Path, heald_yaml) -> None:
    """setup.py computes install_requires: heald cannot declare the missing distribution; the
    remedy fails once with the reason and the incident escalates (max_attempts is 2)."""
    calc = CALC.replace('"""A tiny calculator."""\n', '"""A tiny calculator."""\nimport six\n')
    repo = open_tmp / "calc"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    setup = ("from setuptools import setup\n\n\ndef requirements():\n    return []\n\n\n"
             "setup(name='calc', version='0.1', py_modules=['calc'], install_requires=requirements())\n")
    commit(repo, "Start", {"setup.py": setup, "calc.py": calc, "tests/test_calc.py": TESTS})
    code, d, err = heal(heald_yaml(), repo, "--bad", "main")
    assert code == 1 and d["verdict"] == "missing_dependency", err[-3000:]
    assert len(d["failed_attempts"]) == 1 and "computes install_requires" in d["failed_attempts"][0]
    assert d["remedy"] is None



def test_a_second_run_on_the_same_failure_points_to_the_existing_fix(open_tmp: Path, heald_yaml) -> None:
    repo, first = new_repo(open_tmp / "calc")
    history(repo, 2)
    commit(repo, "Make add faster", {"calc.py": CALC.replace("return a + b", "return a - b")})
    remote = open_tmp / "calc.git"
    sh("git", "clone", "-q", "--bare", str(repo), str(remote), cwd=open_tmp)
    config = heald_yaml(policy={"budgets": {"remedy_cooldown_seconds": 3600}})
    code, d, err = heal(config, remote, "--bad", "main", "--good", first)
    assert code == 0 and d["branch"], err[-3000:]
    code, again, err = heal(config, remote, "--bad", "main", "--good", first)
    assert again["verdict"] == "already_proposed" and again["remedy"] is None, err[-3000:]
    assert d["branch"] in again["summary"] and "cooldown" not in (again["reason"] or "")
