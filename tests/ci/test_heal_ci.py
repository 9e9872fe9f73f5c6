"""``heald heal-ci`` end to end, as a user runs it: real git repositories with real test suites,
a real bare repository as the remote, the real sandbox, pip from the package index, and the
pull request through githubkit against a local server that answers like GitHub's REST API.

Cases: a culprit commit (revert), a dropped dependency (declare it), a lint error (autofix), and
do no harm — a failure red on every commit and a test that never passed (escalated, nothing
pushed) — and a flaky test (reported, nothing pushed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.ci.conftest import TOKEN
from tests.ci.repos import CALC, PYPROJECT, TESTS, bare_remote, commit, history, new_repo, sh
from tests.conftest import run_heald

pytestmark = pytest.mark.slow


def heal(config: Path, remote: Path, *args: str, token: bool = True) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    r = run_heald("--config", str(config), "heal-ci", "--repo", str(remote), *args, "--json",
                  env={"GITHUB_TOKEN": TOKEN} if token else {"GITHUB_TOKEN": ""}, timeout=600)
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"heal-ci printed no JSON (exit {r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}")
    return r.returncode, data, r.stderr


def remote_branches(remote: Path) -> dict[str, str]:
    out = sh("git", f"--git-dir={remote}", "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads",
             cwd=remote.parent)
    return dict(line.split() for line in out.splitlines())


def test_culprit_is_reverted_validated_pushed_and_proposed(open_tmp: Path, heald_yaml, fake_github) -> None:
    repo, first = new_repo(open_tmp / "calc")
    history(repo, 5)
    culprit = commit(repo, "Make add faster", {"calc.py": CALC.replace("return a + b", "return a - b")},
                     author="Eve Breaker <eve@example.com>")
    history(repo, 4, start=10)
    remote = bare_remote(repo, open_tmp / "calc.git")
    gh = fake_github({"octo/calc": remote})
    config = heald_yaml(ci={"github": {"api_url": gh.url}})
    code, d, err = heal(config, remote, "--bad", "main", "--github-repo", "octo/calc")
    assert code == 0, err[-3000:]
    assert d["outcome"] == "fix_proposed" and d["verdict"] == "regression" and d["remedy"] == "revert_commit"
    assert d["culprit"]["sha"] == culprit and d["culprit"]["author"] == "Eve Breaker <eve@example.com>"
    assert d["category"] == "regression" and d["confidence"] >= 0.9
    # the branch on the remote holds a revert of the culprit, on top of the failing commit
    branches = remote_branches(remote)
    assert branches[d["branch"]] == d["fix_sha"] and d["branch"].startswith("heald/revert-")
    assert sh("git", f"--git-dir={remote}", "show", f"{d['fix_sha']}:calc.py", cwd=open_tmp) == CALC
    assert sh("git", f"--git-dir={remote}", "rev-parse", f"{d['fix_sha']}^", cwd=open_tmp).strip() == branches["main"]
    message = sh("git", f"--git-dir={remote}", "log", "-1", "--format=%an <%ae>%n%B", d["fix_sha"], cwd=open_tmp)
    assert message.startswith("heald <heald@localhost>\nRevert \"Make add faster\"") and culprit in message
    # the pull request went through the REST API with the real endpoint's fields
    [create] = [r for r in gh.requests if r["method"] == "POST"]
    body = json.loads(create["body"])
    assert create["path"] == "/repos/octo/calc/pulls" and create["headers"]["Authorization"] == f"token {TOKEN}"
    assert body["head"] == d["branch"] and body["base"] == "main" and body["draft"] is True
    assert body["title"] == 'Revert "Make add faster"'
    assert d["pull_request"] == {"number": 1, "url": "https://github.example/octo/calc/pull/1"}
    text = body["body"]
    for expected in (culprit, "Eve Breaker <eve@example.com>", "test_add", "bisection", "## Checks in the sandbox",
                     "| tests |", "FAIL (exit 1", "| pass (exit 0) |", "## Commands run in the sandbox", "| install |",
                     "(package index only)", "regression"):
        assert expected in text, expected
    assert "assert -1 == 5" in text or "assert (2 - 3) == 5" in text or "AssertionError" in text or "assert" in text


def test_bisection_runs_stay_within_the_bound(open_tmp: Path, heald_yaml) -> None:
    repo, first = new_repo(open_tmp / "calc")
    history(repo, 9)
    commit(repo, "Tune mul", {"calc.py": CALC.replace("return a * b", "return a * b + 1")})
    history(repo, 20, start=100)
    remote = bare_remote(repo, open_tmp / "calc.git")
    code, d, err = heal(heald_yaml(), remote, "--bad", "main", "--good", first, token=False)
    assert code == 0, err[-3000:]
    n = d["commits_in_range"]
    assert n == 30 and d["good_sha"] == first
    # the good commit checked once, git bisect's steps, the culprit and its parent re-run
    assert d["bisect_runs"] <= math.ceil(math.log2(n)), d
    assert d["test_runs"] - 1 - 2 - 1 <= math.ceil(math.log2(n)) + 3  # minus the reproduction and 2 flake re-runs
    assert d["pull_request"] is None and "not on GitHub" in d["pull_request_note"]  # a local repository: branch only
    assert d["branch"] in remote_branches(remote)


def test_a_dropped_dependency_is_declared_again(open_tmp: Path, heald_yaml, fake_github) -> None:
    calc = CALC.replace('"""A tiny calculator."""\n', '"""A tiny calculator."""\nimport six\n')
    repo, first = new_repo(open_tmp / "calc", deps='"six>=1.10"', calc=calc)
    history(repo, 2)
    commit(repo, "Trim dependencies", {"pyproject.toml": PYPROJECT.format(deps="", extra="")})
    remote = bare_remote(repo, open_tmp / "calc.git")
    gh = fake_github({"octo/calc": remote})
    code, d, err = heal(heald_yaml(ci={"github": {"api_url": gh.url}}), remote, "--bad", "main",
                        "--github-repo", "octo/calc")
    assert code == 0, err[-3000:]
    assert d["verdict"] == "missing_dependency" and d["remedy"] == "add_dependency" and d["category"] == "missing_module"
    pyproject = sh("git", f"--git-dir={remote}", "show", f"{d['fix_sha']}:pyproject.toml", cwd=open_tmp)
    assert 'dependencies = ["six>=1.' in pyproject  # a version that installed in the sandbox
    changed = sh("git", f"--git-dir={remote}", "diff", "--name-only", f"{d['fix_sha']}^", d["fix_sha"], cwd=open_tmp)
    assert changed.split() == ["pyproject.toml"]
    [create] = [r for r in gh.requests if r["method"] == "POST"]
    assert "ModuleNotFoundError" in json.loads(create["body"])["body"]
    assert json.loads(create["body"])["title"].startswith("Declare the missing dependency six>=")


def test_a_lint_error_is_autofixed(open_tmp: Path, heald_yaml, fake_github) -> None:
    repo, first = new_repo(open_tmp / "calc", extra="\n[tool.ruff]\nline-length = 100\n")
    history(repo, 2)
    commit(repo, "Add a helper", {"calc.py": "import os\n" + CALC + "\n\ndef sub(a, b):\n    return a - b\n"})
    remote = bare_remote(repo, open_tmp / "calc.git")
    gh = fake_github({"octo/calc": remote})
    code, d, err = heal(heald_yaml(ci={"github": {"api_url": gh.url}}), remote, "--bad", "main",
                        "--github-repo", "octo/calc")
    assert code == 0, err[-3000:]
    assert d["verdict"] == "lint" and d["remedy"] == "lint_autofix" and d["category"] == "lint_error"
    fixed = sh("git", f"--git-dir={remote}", "show", f"{d['fix_sha']}:calc.py", cwd=open_tmp)
    assert "import os" not in fixed and "def sub(a, b):" in fixed
    [create] = [r for r in gh.requests if r["method"] == "POST"]
    assert "F401" in json.loads(create["body"])["body"]


def test_red_on_every_commit_escalates_without_a_revert(open_tmp: Path, heald_yaml) -> None:
    tests = TESTS + "\n\ndef test_old_python():\n    import sys\n    assert sys.version_info < (3, 8)\n"
    repo, first = new_repo(open_tmp / "calc", tests=tests)
    history(repo, 6)
    remote = bare_remote(repo, open_tmp / "calc.git")
    before = remote_branches(remote)
    code, d, err = heal(heald_yaml(), remote, "--bad", "main", token=False)
    assert code == 1 and d["outcome"] == "escalated", err[-3000:]
    assert d["verdict"] == "red_everywhere" and d["category"] == "environment_drift"
    assert d["remedy"] is None and d["branch"] is None
    assert "no remedy" in d["reason"]
    assert remote_branches(remote) == before  # nothing pushed


def test_a_test_that_never_passed_is_not_reverted(open_tmp: Path, heald_yaml) -> None:
    repo, first = new_repo(open_tmp / "calc")
    history(repo, 3)
    added = commit(repo, "Add division tests", {"tests/test_div.py": "from calc import add\n\n\ndef test_div():\n"
                                                                      "    from calc import div\n    assert div(6, 3) == 2\n"})
    history(repo, 2, start=10)
    remote = bare_remote(repo, open_tmp / "calc.git")
    before = remote_branches(remote)
    code, d, err = heal(heald_yaml(), remote, "--bad", "main", "--good", first, token=False)
    assert code == 1 and d["outcome"] == "escalated", err[-3000:]
    assert d["verdict"] == "never_passed" and d["culprit"]["sha"] == added
    assert d["remedy"] is None and remote_branches(remote) == before


def test_a_flaky_test_is_reported_and_nothing_changes(open_tmp: Path, heald_yaml) -> None:
    flaky = TESTS + ("\n\ndef test_sometimes():\n    import pathlib\n    seen = pathlib.Path('.flaky-seen')\n"
                     "    first = not seen.exists()\n    seen.write_text('x')\n    assert not first\n")
    repo, first = new_repo(open_tmp / "calc", tests=flaky)
    remote = bare_remote(repo, open_tmp / "calc.git")
    code, d, err = heal(heald_yaml(), remote, "--bad", "main", token=False)
    assert code == 1 and d["verdict"] == "flaky" and d["category"] == "flaky_test", err[-3000:]
    assert d["remedy"] is None and d["branch"] is None


def test_heal_ci_refuses_without_a_sandbox(open_tmp: Path, heald_yaml) -> None:
    repo, _ = new_repo(open_tmp / "calc", tests=TESTS + "\n\ndef test_marker():\n    open('/tmp/ran', 'w')\n")
    (open_tmp / "empty-bin").mkdir()
    r = run_heald("--config", str(heald_yaml()), "heal-ci", "--repo", str(repo), "--bad", "main",
                  env={"PATH": str(open_tmp / "empty-bin")})
    assert r.returncode == 3
    assert "never runs it unsandboxed" in r.stderr and "install bubblewrap" in r.stderr
    assert not (open_tmp / "ci").exists()  # nothing was even cloned


def test_bad_input_names_the_option(open_tmp: Path, heald_yaml) -> None:
    repo, _ = new_repo(open_tmp / "calc")
    r = run_heald("--config", str(heald_yaml()), "heal-ci", "--repo", str(repo), "--bad", "no-such-branch")
    assert r.returncode == 2 and "--bad" in r.stderr and "'no-such-branch' is not a commit" in r.stderr
