"""What heald reads from a project (checks, installs, dependency declarations, protected paths)
and how it judges a fix — on project files as real projects write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from heald.ci.fix import validate
from heald.ci.investigate import importer_of
from heald.ci.project import (
    Files,
    UnsupportedDeclaration,
    add_requirement,
    distribution_candidates,
    forbidden_changes,
    install_script,
    is_local_module,
    narrowed,
)
from heald.ci.pull_request import failure_signature, github_repo
from heald.ci.testcommand import detect_checks


def files(tree: dict[str, str]) -> Files:
    return Files(tree.get, tree)


def test_checks_follow_the_projects_configuration() -> None:
    ruff = files({"pyproject.toml": "[tool.ruff]\nline-length = 100\n[tool.ruff.format]\nquote-style = 'double'\n",
                  "tests/test_x.py": "import pytest\n"})
    assert [(c.name, c.command, c.fix) for c in detect_checks(ruff)] == [
        ("ruff", "ruff check --no-cache --no-fix .", "ruff check --no-cache --fix ."),
        ("ruff format", "ruff format --no-cache --check .", "ruff format --no-cache ."),
        ("tests", "python -m pytest -q -rfE -p no:cacheprovider --continue-on-collection-errors", None)]
    black = files({"pyproject.toml": "[tool.black]\n[tool.isort]\nprofile = 'black'\n", "test_a.py": "import unittest\n"})
    assert [c.name for c in detect_checks(black)] == ["black", "isort", "tests"]
    assert detect_checks(black)[-1].command.startswith("python -m unittest discover")
    flake8 = files({"setup.cfg": "[flake8]\nmax-line-length = 88\n", "tests/test_a.py": "def test_a(): pass\n"})
    assert [(c.name, c.fix) for c in detect_checks(flake8)][0] == ("flake8", None)
    hooks = files({".pre-commit-config.yaml": "repos:\n- repo: https://github.com/astral-sh/ruff-pre-commit\n  rev: v0.4.4\n"
                                              "  hooks:\n  - id: ruff\n  - id: ruff-format\n"})
    assert [c.name for c in detect_checks(hooks, "make test")] == ["ruff", "ruff format", "tests"]
    assert detect_checks(hooks, "make test")[-1].command == "make test"
    assert "ruff==0.4.4" in install_script(hooks, "python3", detect_checks(hooks))


def test_the_install_phase_installs_the_project_with_its_test_extras_and_requirements() -> None:
    f = files({"pyproject.toml": "[project]\nname='x'\n[project.optional-dependencies]\ntests=['pytest']\ndocs=['sphinx']\n",
               "requirements/tests.txt": "freezegun==1.2\n", "tests/test_a.py": "import pytest\n"})
    script = install_script(f, "python3", detect_checks(f))
    assert "python3 -m venv .heald/venv" in script  # the default own directory; the runner passes one outside the tree
    assert "-e '.[tests]'" in script and "-r requirements/tests.txt" in script and "docs" not in script
    assert "import pytest" in script  # pytest itself, when the project does not bring it


def test_add_requirement_keeps_the_file_and_goes_where_the_project_declares(tmp_path: Path) -> None:
    py = '[project]\nname = "calc"\ndependencies = [\n    "click>=8",  # the CLI\n]\n\n[tool.x]\ny = 1\n'
    f = files({"pyproject.toml": py})
    edit = add_requirement(tmp_path, f, "six", "1.17.0")
    assert edit.path == "pyproject.toml" and edit.requirement == "six>=1.17.0"
    assert (tmp_path / "pyproject.toml").read_text() == ('[project]\nname = "calc"\ndependencies = [\n    "click>=8",  # the CLI\n'
                                                         '    "six>=1.17.0",\n]\n\n[tool.x]\ny = 1\n')
    extras = files({"pyproject.toml": '[project]\nname = "a"\n[project.optional-dependencies]\ntests = ["pytest"]\n'})
    add_requirement(tmp_path, extras, "hypothesis", "6.100.0", scope="test")
    assert 'tests = ["pytest", "hypothesis>=6.100.0"]' in (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "requirements").mkdir()
    compiled = files({"setup.py": "", "requirements/dev.txt": "tox\n", "requirements/tests.txt": "pytest==8.0\n",
                      "requirements/tests.in": "pytest"})
    edit = add_requirement(tmp_path, compiled, "freezegun", "1.5.1", scope="test")
    assert edit.path == "requirements/tests.txt" and edit.notes == ["requirements/tests.in"]
    assert (tmp_path / "requirements/tests.in").read_text() == "pytest\nfreezegun>=1.5.1\n"
    plain = files({"requirements.txt": "flask\n"})
    assert add_requirement(tmp_path, plain, "six", "1.0").path == "requirements.txt"
    assert add_requirement(tmp_path, files({"setup.py": "setup()"}), "six", "1.0").path == "setup.py"
    assert (tmp_path / "setup.py").read_text() == 'setup(install_requires=["six>=1.0"])'
    with pytest.raises(UnsupportedDeclaration, match="setup.py"):
        add_requirement(tmp_path, files({"setup.py": "setup(install_requires=reqs())"}), "six", "1.0")


def test_add_requirement_never_writes_through_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("do not leak\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "requirements.txt").symlink_to(secret)
    with pytest.raises(UnsupportedDeclaration, match="symbolic link"):
        add_requirement(tree, files({"requirements.txt": "flask\n"}), "six", "1.0")
    assert secret.read_text() == "do not leak\n"


def test_tests_and_ci_configuration_are_protected() -> None:
    paths = ["src/calc.py", "tests/test_calc.py", "conftest.py", "pkg/test_util.py", ".github/workflows/ci.yml",
             "tox.ini", "pyproject.toml", "docs/index.md"]
    assert forbidden_changes(paths) == ["tests/test_calc.py", "conftest.py", "pkg/test_util.py",
                                        ".github/workflows/ci.yml", "tox.ini"]
    assert forbidden_changes(paths, allow_tests=True) == [".github/workflows/ci.yml", "tox.ini"]


def test_missing_modules_map_to_distributions_unless_they_are_the_projects_own() -> None:
    assert distribution_candidates("yaml") == ["PyYAML", "yaml"]
    assert distribution_candidates("google.protobuf")[0] == "protobuf"
    assert distribution_candidates("more_itertools")[:2] == ["more-itertools", "more_itertools"]
    f = files({"src/calc/__init__.py": "", "tests/test_a.py": ""})
    assert is_local_module(f, "calc.ops") and not is_local_module(f, "six")


def test_the_importer_of_a_missing_module_is_read_from_the_traceback(tmp_path: Path) -> None:
    pytest_out = ("______ ERROR collecting tests/test_calc.py ______\ntests/test_calc.py:1: in <module>\n"
                  "    from calc import add\ncalc.py:2: in <module>\n    import six\n"
                  "E   ModuleNotFoundError: No module named 'six'\n")
    assert importer_of(pytest_out, tmp_path) == "calc.py"
    python_out = (f'Traceback (most recent call last):\n  File "{tmp_path}/tests/test_t.py", line 3, in <module>\n'
                  "    import freezegun\nModuleNotFoundError: No module named 'freezegun'\n")
    assert importer_of(python_out, tmp_path) == "tests/test_t.py"


def test_validation_wants_the_failure_fixed_and_nothing_broken() -> None:
    def r(ok: bool, failed: list[str] = ()) -> dict:  # type: ignore[assignment,type-arg]
        return {"ok": ok, "exit": 0 if ok else 1, "failed_tests": list(failed), "command": "x"}

    before = {"ruff": r(True), "tests": r(False, ["t::a"])}
    assert validate(before, {"ruff": r(True), "tests": r(True)}) == (True, "now passing: tests; nothing that passed before fails")
    ok, why = validate(before, {"ruff": r(False), "tests": r(True)})
    assert not ok and "ruff passed before and fails after the fix" in why
    ok, why = validate(before, {"ruff": r(True), "tests": r(False, ["t::a"])})
    assert not ok and "still fails: t::a" in why
    ok, why = validate(before, {"ruff": r(True), "tests": r(False, ["t::b"])})
    assert not ok and "tests that passed now fail: t::b" in why
    two = {"tests": r(False, ["t::a", "t::c"])}
    assert validate(two, {"tests": r(False, ["t::c"])})[0] is False  # one independent failure remains: not a fix

    # a check the fix does not target (formatter drift) may keep failing as before, never worse
    drift = {"black": r(False), "tests": r(False, ["t::a"])}
    ok, why = validate(drift, {"black": r(False), "tests": r(True)}, targets={"tests"})
    assert ok and "black failed before and fail the same way after" in why
    assert validate(drift, {"black": r(False), "tests": r(True)})[0] is False  # no targets given: every failing check
    ok, why = validate(drift, {"black": r(True), "tests": r(False, ["t::a"])}, targets={"tests"})
    assert not ok and "tests still fails: t::a" in why
    slow = {"other": r(False, ["o::1"]), "tests": r(False, ["t::a"])}
    ok, why = validate(slow, {"other": r(False, ["o::1", "o::2"]), "tests": r(True)}, targets={"tests"})
    assert not ok and "tests that passed now fail: o::2" in why


def test_narrowing_and_signatures_and_github_names() -> None:
    [tests] = detect_checks(files({"tests/test_a.py": "import pytest"}))
    assert narrowed(tests, ["tests/test_a.py::test_x[1-2]"]) == (
        "python -m pytest -q -rfE -p no:cacheprovider --continue-on-collection-errors 'tests/test_a.py::test_x[1-2]'",
        True)
    custom = detect_checks(files({"tests/test_a.py": ""}), "make check")[-1]
    assert narrowed(custom, ["a::b"]) == ("make check", False)
    assert failure_signature("o/r", "revert", "abc") == failure_signature("o/r", "revert", "abc")
    assert failure_signature("o/r", "revert", "abc") != failure_signature("o/r", "revert", "abd")
    assert github_repo("x", "https://github.com/octo/calc.git") == "octo/calc"
    assert github_repo("x", "git@github.com:octo/calc.git") == "octo/calc"
    assert github_repo("octo/calc", "/srv/mirrors/calc.git") == "octo/calc"
    assert github_repo("calc", "/srv/calc.git") is None


def test_a_revert_that_conflicts_or_changes_nothing_is_not_a_fix(tmp_path: Path) -> None:
    """A culprit that was already undone by hand (its revert would change nothing) and one whose
    lines later commits changed (its revert conflicts) are both unrevertable, with the reason."""
    import subprocess

    from heald.ci.investigate import _revert_conflicts
    from heald.ci.repo import RepoCache

    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / "m.py").write_text("def a():\n    return 1\n")
    git("add", ".")
    git("commit", "-qm", "base")
    (repo / "m.py").write_text("def a():\n    return 2\n")
    git("commit", "-qam", "culprit")
    culprit = git("rev-parse", "HEAD")
    (repo / "m.py").write_text("def a():\n    return 1\n")
    git("commit", "-qam", "undo it by hand")
    undone = git("rev-parse", "HEAD")
    (repo / "m.py").write_text("def a():\n    return 3\n")
    git("commit", "-qam", "change the same line")
    changed = git("rev-parse", "HEAD")
    (repo / "n.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "unrelated")

    cache = RepoCache(tmp_path / "ci", "repo", str(repo))
    cache.update()
    assert _revert_conflicts(cache, culprit, culprit) is None  # on the culprit itself it applies
    noop = _revert_conflicts(cache, undone, culprit)
    assert noop is not None and "changes nothing" in noop
    conflict = _revert_conflicts(cache, changed, culprit)
    assert conflict is not None and "does not apply cleanly" in conflict


def test_tests_added_by_knows_inherited_and_class_tests(tmp_path: Path) -> None:
    """A failing test collected through a class the file imports existed before the culprit; a
    method or file the culprit added did not."""
    import subprocess

    from heald.ci.investigate import _tests_added_by
    from heald.ci.repo import RepoCache

    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / "tests" / "test_base.py").write_text("class TestSerializer:\n    def test_loads(self):\n        pass\n")
    (repo / "tests" / "test_timed.py").write_text("from test_base import TestSerializer\n\n\n"
                                                  "class TestTimed:\n    def test_old(self):\n        pass\n\n\n"
                                                  "class TestSub(TestSerializer):\n    pass\n")
    git("add", ".")
    git("commit", "-qm", "base")
    parent = git("rev-parse", "HEAD")
    cache = RepoCache(tmp_path / "ci", "repo", str(repo))
    cache.update()
    ids = ["tests/test_timed.py::TestSerializer::test_loads[a]", "tests/test_timed.py::TestTimed::test_old",
           "tests/test_timed.py::TestSub::test_loads",
           "tests/test_timed.py::TestTimed::test_new", "tests/test_new.py::test_x", "tests/test_base.py::test_gone"]
    assert _tests_added_by(cache, parent, ids) == ["tests/test_timed.py::TestTimed::test_new", "tests/test_new.py::test_x",
                                                   "tests/test_base.py::test_gone"]
