"""How heald finds a project's own test command (with the evidence of where), narrows it to
failing tests, reads failing ids, and judges a run test by test — on files as real projects
write them."""

from __future__ import annotations

import pytest

from heald.ci.investigate import is_quarantined, passes_for
from heald.ci.project import Check, Files, UnsupportedDeclaration, install_script, narrowed
from heald.ci.runner import _RUN_LINE, Step
from heald.ci.testcommand import detect_checks, find_test_command, normalize
from heald.diagnose.signatures.ci import failing_ids


def files(tree: dict[str, str]) -> Files:
    return Files(tree.get, tree)


WORKFLOW = """name: CI
on: [push]
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: flake8 .
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - name: Install
        run: pip install -e .[test]
      - name: Run the tests
        run: |
          coverage run -m pytest -n auto --cov=pkg tests/unit
          coverage report
"""


def test_the_ci_workflow_wins_and_says_where_it_came_from() -> None:
    f = files({".github/workflows/ci.yml": WORKFLOW, "tox.ini": "[testenv]\ncommands = pytest other\n",
               "tests/unit/test_a.py": "def test_a(): pass\n"})
    [check] = detect_checks(f)
    assert check.command == ("python -m pytest -rfE -p no:cacheprovider --continue-on-collection-errors tests/unit")
    assert check.source == (".github/workflows/ci.yml (job test, step Run the tests): coverage run -m pytest -n auto "
                            "--cov=pkg tests/unit")


def test_a_tox_only_project_gets_toxs_command_and_deps() -> None:
    tox = ("[tox]\nenvlist = py3\n\n[testenv]\ndeps =\n    pytest\n    mock>=2\n    -rrequirements-test.txt\n"
           "commands =\n    py.test {posargs:tests} -v\n")
    f = files({"tox.ini": tox, "setup.py": "from setuptools import setup\nsetup()\n", "tests/test_a.py": ""})
    [check] = detect_checks(f)
    assert check.command == "python -m pytest -rfE -p no:cacheprovider --continue-on-collection-errors -v"
    assert check.source == "tox.ini [testenv] commands: py.test {posargs:tests} -v"
    assert check.requires == ("pytest", "mock>=2")
    script = install_script(f, "python3", [check], own="/srv/own")
    assert "'mock>=2'" in script and "/srv/own/venv" in script and ".heald" not in script


def test_a_ci_step_that_runs_tox_or_make_is_followed() -> None:
    wf = "jobs:\n  t:\n    steps:\n      - run: tox -e py\n"
    f = files({".github/workflows/t.yaml": wf, "tox.ini": "[testenv]\ncommands = python -m unittest discover -s t\n"})
    found = find_test_command(f)
    assert found is not None and found.command == "python -m unittest discover -s t"
    assert "runs `tox -e py`" in found.evidence and "tox.ini [testenv]" in found.evidence
    mk = files({".travis.yml": "script:\n  - make test\n", "Makefile": "test:\n\t@$(PYTHON) -m pytest -x tests\n"})
    found = find_test_command(mk)
    assert found is not None and found.command.endswith("-x tests") and "Makefile target test" in found.evidence


def test_nox_and_nose_layouts() -> None:
    nox = files({"noxfile.py": "import nox\n\n@nox.session\ndef tests(session):\n    session.install('.')\n"
                               "    session.run('pytest', 'tests', '--strict-markers')\n"})
    found = find_test_command(nox)
    assert found is not None and found.command.endswith("tests --strict-markers")
    # youtube-dl style: nose, test modules named tests_*.py / test_*.py mixed under test/
    nose = files({"setup.cfg": "[nosetests]\nverbosity = 2\n", "test/tests_extract.py": "", "test/helper.py": ""})
    found = find_test_command(nose)
    assert found is not None and "python_files=test*.py *_test.py tests_*.py" in found.command
    assert normalize("nosetests -v test/") is not None and "python_files" in (normalize("nosetests -v") or "")


def test_commands_that_run_no_tests_are_not_taken() -> None:
    assert normalize("flake8 .") is None and normalize("pip install -e .") is None
    assert normalize("python -m build") is None


@pytest.mark.parametrize(("command", "ids", "expected"), [
    # the paths the command names are replaced by the ids (appending would run them whole)
    ("python -m pytest -q tests/unit -p no:cacheprovider", ["tests/unit/test_a.py::t"],
     "python -m pytest -q -p no:cacheprovider tests/unit/test_a.py::t"),
    ("python -m pytest -o 'python_files=tests_*.py' test", ["test/tests_x.py::T::t[a+b\\c;d]"],
     "python -m pytest -o 'python_files=tests_*.py' 'test/tests_x.py::T::t[a+b\\c;d]'"),
])
def test_narrowing_replaces_the_paths_a_command_names(command: str, ids: list[str], expected: str) -> None:
    assert narrowed(Check("tests", command, "tests"), ids) == (expected, True)


def test_commands_heald_cannot_narrow_run_whole() -> None:
    for command in ("cd src && python -m pytest", "python -m pytest -k fast", "make test", "tox"):
        assert narrowed(Check("tests", command, "tests"), ["t.py::a"]) == (command, False)


def test_failing_ids_keep_special_characters_and_collection_errors() -> None:
    out = ("FAILED tests/test_a.py::test_x[a+b\\c;d - e] - AssertionError: boom\n"
           "FAILED tests/test_a.py::TestK::test_y[1-2]\n"
           "ERROR tests/test_b.py - ImportError: x\n"
           "_____ ERROR collecting tests/test_c.py _____\n"
           "FAIL: test_z (pkg.tests.T)\n")
    assert failing_ids(out) == (["tests/test_a.py::test_x[a+b\\c;d - e]", "tests/test_a.py::TestK::test_y[1-2]",
                                 "pkg.tests.T.test_z"], ["tests/test_b.py", "tests/test_c.py"])


def step(exit: int | None, output: str = "", timed_out: bool = False) -> Step:
    return Step("search", "x", "c" * 40, exit, 1.0, timed_out, output=output)


def test_a_run_is_judged_for_the_regression_tests_only() -> None:
    env_fail = "FAILED tests/test_env.py::test_home - OSError\n"
    assert passes_for(step(1, env_fail), ["tests/test_a.py::test_add"])
    assert not passes_for(step(1, env_fail + "FAILED tests/test_a.py::test_add - assert 1 == 2\n"),
                          ["tests/test_a.py::test_add"])
    assert not passes_for(step(1, "ERROR tests/test_a.py - SyntaxError\n"), ["tests/test_a.py::test_add"])
    for code in (2, 4, 5):  # interrupted, usage error (a file that does not exist yet), no tests: never a pass
        assert not passes_for(step(code, env_fail), ["tests/test_a.py::test_add"])
    assert not passes_for(step(1, "something broke\n"), ["t.py::a"])  # unreadable failure
    assert not passes_for(step(None, "", timed_out=True), [])
    assert passes_for(step(0), [])


def test_quarantine_entries_cover_their_tests() -> None:
    q = ["tests/test_net.py", "tests/test_b.py::TestSlow", "tests/test_c.py::test_p*"]
    assert is_quarantined("tests/test_net.py::test_dns", q)
    assert is_quarantined("tests/test_b.py::TestSlow::test_x", q)
    assert is_quarantined("tests/test_c.py::test_param[1]", q)
    assert not is_quarantined("tests/test_b.py::TestSlowest::test_x", q)
    assert not is_quarantined("tests/test_net.py.bak::x", ["tests/test_net.py"])


def test_a_bisect_run_line_glued_to_git_s_last_line_is_read() -> None:
    out = ("running  /bin/sh step.sh\nabc is the first bad commit\nbisect found first bad commit"
           f"HEALD-RUN {'a' * 40} 1 bad\nHEALD-RUN {'b' * 40} 0 good\n")
    assert [m.group(1)[0] for m in _RUN_LINE.finditer(out)] == ["a", "b"]


SETUP_PY = '''from setuptools import setup

REQUIRES = [
    'colorama',  # colours
    'psutil',
]

setup(
    name='thefuck',
    install_requires=REQUIRES,
    entry_points={'console_scripts': ['fuck = thefuck.main:main']},
)
'''


def test_a_runtime_dependency_of_a_setup_py_project_goes_into_install_requires(tmp_path) -> None:
    from heald.ci.project import add_install_requires, add_requirement

    # the list a name refers to, comments and quotes kept; requirements-dev.txt is not a runtime declaration
    f = files({"setup.py": SETUP_PY, "requirements-dev.txt": "pytest\n", "requirements.txt": "pytest\nmock\n"})
    edit = add_requirement(tmp_path, f, "decorator", "5.1")
    assert edit.path == "setup.py" and "REQUIRES" in edit.notes[0]
    text = (tmp_path / "setup.py").read_text()
    assert "    'psutil',\n    'decorator>=5.1',\n]" in text and "'colorama',  # colours" in text
    assert not (tmp_path / "requirements.txt").exists()
    # a literal list in the call, and a call without install_requires
    inline, where = add_install_requires("from setuptools import setup\nsetup(name='x', install_requires=[\"a\"])\n", "b>=1")
    assert inline == "from setuptools import setup\nsetup(name='x', install_requires=[\"a\", \"b>=1\"])\n"
    added, where = add_install_requires("import setuptools\nsetuptools.setup(name='x')\n", "b>=1")
    assert added == "import setuptools\nsetuptools.setup(name='x', install_requires=[\"b>=1\"])\n" and "new" in where
    # code that computes the dependencies is not guessed into
    for src in ("from setuptools import setup\nsetup(install_requires=read_reqs())\n",
                "from setuptools import setup\nsetup(**kw)\n", "setup(\n"):
        with pytest.raises(UnsupportedDeclaration):
            add_install_requires(src, "b>=1")
    # setup.py that reads requirements.txt: that file is its runtime declaration
    reads = files({"setup.py": "from setuptools import setup\nsetup(install_requires=open('requirements.txt').read()"
                               ".split())\n", "requirements.txt": "six\n"})
    (tmp_path / "r").mkdir()
    (tmp_path / "c").mkdir()
    assert add_requirement(tmp_path / "r", reads, "decorator", "5.1").path == "requirements.txt"
    cfg = files({"setup.cfg": "[metadata]\nname = x\n\n[options]\ninstall_requires =\n    six\n    attrs\npackages = x\n"})
    add_requirement(tmp_path / "c", cfg, "decorator", "5.1")
    assert "install_requires =\n    six\n    attrs\n    decorator>=5.1\npackages = x" in (tmp_path / "c" / "setup.cfg").read_text()


def test_a_verification_message_counts_right() -> None:
    from datetime import UTC, datetime

    from heald.models import CheckResult
    from heald.verify import _passed_reason

    one = [CheckResult(name="fix branch passes", ok=True, at=datetime.now(UTC), detail="tests: exit 0 in 2.0 s")]
    assert _passed_reason(one, 0.0, 0) == "the check passed (fix branch passes: tests: exit 0 in 2.0 s)"
    assert _passed_reason(one * 3, 31.0, 30) == "all 3 checks passed, stable for 31.0 s"


def test_a_fix_is_valid_when_only_baseline_failures_remain() -> None:
    from heald.ci.fix import validate

    def r(ok: bool, failed: list[str]) -> dict:  # type: ignore[type-arg]
        return {"ok": ok, "exit": 0 if ok else 1, "failed_tests": failed}

    env, reg = "tests/test_env.py::test_net", "tests/test_calc.py::test_add"
    before = {"tests": r(False, [env, reg])}
    assert validate(before, {"tests": r(False, [env])}, {"tests"}, baseline=[env])[0]
    ok, why = validate(before, {"tests": r(False, [env])}, {"tests"})
    assert not ok and "still fails" in why  # without the baseline, the environment's failure is not excused
    assert not validate(before, {"tests": r(False, [env, reg])}, {"tests"}, baseline=[env])[0]
