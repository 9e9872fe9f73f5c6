"""How a project runs its tests, read from its own declarations, with the evidence of where.

Read in this order, the first that names a test runner wins:

1. CI workflows: ``.github/workflows/*.yml`` / ``*.yaml`` (GitHub Actions ``jobs.<id>.steps[].run``,
   docs.github.com/actions/reference/workflow-syntax-for-github-actions), ``.travis.yml``
   (``script``), ``.gitlab-ci.yml`` (``<job>.script``); a step that calls ``tox``, ``nox`` or
   ``make <target>`` is followed into that file;
2. ``tox.ini`` ``[testenv]`` ``commands`` (and ``deps``, installed too), or ``setup.cfg``'s
   ``[tox:tox]``/``[testenv]`` (tox.wiki/en/latest/config.html);
3. ``noxfile.py`` ``session.run("pytest", …)`` calls (read as text, never executed);
4. a ``Makefile`` ``test``/``tests``/``check`` target's recipe;
5. pytest configuration (``[tool.pytest.ini_options]``, ``pytest.ini``, ``[tool:pytest]``,
   ``tox.ini [pytest]``), then the layout (nose-style ``tests_*.py`` files, ``unittest``).

Whatever runs the tests is turned into a command for heald's sandbox: the project's own test
runner and its arguments, run with the interpreter of heald's environment (``python -m
pytest``), without tox/nox/coverage wrappers and ``--cov`` options (their plugins need not be
installed), with ``-rfE`` so that the failing test ids can be read, and tox's ``{posargs}``
and ``{toxinidir}`` substituted.
"""

from __future__ import annotations

import configparser
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from heald.ci.project import TEST_DIRS, Check, Files, is_test_path, uses_pytest

#: ``--continue-on-collection-errors``: a module that fails to import (at every commit, often)
#: does not stop the rest of the suite from being judged test by test
PYTEST = "python -m pytest -q -rfE -p no:cacheprovider --continue-on-collection-errors"
#: nose and nose2 collect ``test*``/``*test*`` modules pytest's defaults skip (``tests_*.py``).
NOSE_FILES = "-o 'python_files=test*.py *_test.py tests_*.py'"
_RUNNERS = ("pytest", "py.test", "nosetests", "nose2", "unittest", "setup.py test", "tox", "nox", "make ",
            "zope-testrunner", "trial")


@dataclass(frozen=True)
class TestCommand:
    """A test command heald runs and where it came from: ``command`` (shell), ``evidence``
    (``tox.ini [testenv] commands: pytest {posargs}``), and ``requires``: extra requirements the
    declaration installs for the tests (tox ``deps``), installed best-effort."""

    command: str
    evidence: str
    requires: tuple[str, ...] = field(default=())


def find_test_command(files: Files) -> TestCommand | None:
    """The project's own test command (see the module docstring), or None when nothing names
    one and there are no test files."""
    for finder in (_from_ci, _from_tox, _from_nox, _from_make):
        found = finder(files)
        if found is not None:
            return found
    return _from_layout(files)


# -- turning a declared command line into heald's ----------------------------------------------

def _subst(line: str) -> str:
    """tox's substitutions: ``{posargs}`` (and its default) → nothing, ``{toxinidir}`` → ``.``;
    a word holding any other (``--basetemp={envtmpdir}``) is dropped with the option it is the
    value of: an empty ``--basetemp`` would make pytest clear the work tree."""
    line = re.sub(r"\{posargs(?::[^}]*)?\}", "", line)
    line = line.replace("{toxinidir}", ".").replace("{tox_root}", ".")
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return re.sub(r"\S*\{[a-z_]+\}\S*", "", line)
    kept: list[str] = []
    for w in words:
        if re.search(r"\{[a-z_]+\}", w):
            if kept and kept[-1].startswith("-") and "=" not in kept[-1] and not w.startswith("-"):
                kept.pop()
            continue
        kept.append(w)
    return shlex.join(kept)


def normalize(line: str) -> str | None:
    """heald's command for one declared shell line that runs tests, or None when the line runs
    no test runner heald knows (``pytest``, ``py.test``, ``python -m pytest``, ``coverage run -m
    pytest``, ``nosetests``/``nose2`` (run by pytest), ``python -m unittest``, ``python setup.py
    test``; ``poetry run``/``uv run``/``pdm run``/``hatch run`` prefixes dropped)."""
    line = _subst(line).strip()
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and (re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]) or words[0] in ("exec", "time", "-")):
        words = words[1:]
    while len(words) > 1 and words[0] in ("poetry", "uv", "pdm", "hatch", "pipenv", "rye") and words[1] == "run":
        words = words[2:]
    if not words:
        return None
    head = words[0].rsplit("/", 1)[-1]
    if head == "coverage" and "-m" in words:
        words = ["python", *words[words.index("-m"):]]
        head = "python"
    if re.fullmatch(r"python[\d.]*", head) and len(words) > 2 and words[1] == "-m":
        mod, rest = words[2], words[3:]
        if mod == "coverage" and "-m" in rest:  # python -m coverage run --source x -m pytest …
            i = rest.index("-m")
            mod, rest = (rest[i + 1], rest[i + 2:]) if i + 1 < len(rest) else (mod, rest)
    elif re.fullmatch(r"python[\d.]*", head) and words[1:3] == ["setup.py", "test"]:
        return PYTEST
    elif head in ("pytest", "py.test"):
        mod, rest = "pytest", words[1:]
    elif head in ("nosetests", "nose2"):
        mod, rest = "nose", []
    else:
        return None
    if mod in ("nose", "nose2"):
        return f"{PYTEST} {NOSE_FILES}"
    if mod == "unittest":
        return shlex.join(["python", "-m", "unittest", *rest])
    if mod not in ("pytest", "py.test"):
        return None
    kept: list[str] = []
    skip = False
    for w in rest:
        if skip:
            skip = False
            continue
        if w.startswith("--cov") or w in ("-n", "--numprocesses") or w.startswith(("-n=", "--numprocesses=",
                                                                                     "--dist", "--junitxml",
                                                                                     "--junit-xml")):
            skip = w in ("-n", "--numprocesses", "--cov", "--dist") and "=" not in w
            continue
        if re.fullmatch(r"-n\d+|-nauto", w):
            continue
        kept.append(w)
    extra = [] if any(w.startswith("-r") for w in kept) else ["-rfE"]
    return shlex.join(["python", "-m", "pytest", *extra, "-p", "no:cacheprovider", "--continue-on-collection-errors",
                       *kept])


def _first_test_line(lines: list[str]) -> tuple[str, str] | None:
    """(declared line, heald's command) for the first line that runs tests."""
    for raw in lines:
        for part in re.split(r"\s*(?:&&|;|\|\|)\s*", raw):
            cmd = normalize(part)
            if cmd:
                return part.strip(), cmd
    return None


# -- the declarations ------------------------------------------------------------------------------

def _yaml(files: Files, path: str) -> Any:
    try:
        return yaml.safe_load(files.read(path) or "")
    except yaml.YAMLError:
        return None


def _run_lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return [ln for ln in value.splitlines() if ln.strip()]
    if isinstance(value, list):
        return [ln for v in value for ln in _run_lines(v)]
    return []


def _from_ci(files: Files) -> TestCommand | None:
    sources: list[tuple[str, str, list[str]]] = []  # (file, where, lines)
    for path in sorted(p for p in files.paths if p.startswith(".github/workflows/") and p.endswith((".yml", ".yaml"))):
        data = _yaml(files, path)
        jobs = data.get("jobs") if isinstance(data, dict) else None
        for job_id, job in (jobs or {}).items() if isinstance(jobs, dict) else []:
            for i, step in enumerate((job or {}).get("steps") or [] if isinstance(job, dict) else []):
                if isinstance(step, dict) and "run" in step:
                    sources.append((path, f"job {job_id}, step {step.get('name') or i + 1}", _run_lines(step["run"])))
    travis = _yaml(files, ".travis.yml")
    if isinstance(travis, dict):
        sources.append((".travis.yml", "script", _run_lines(travis.get("script"))))
    gitlab = _yaml(files, ".gitlab-ci.yml")
    if isinstance(gitlab, dict):
        for name, job in gitlab.items():
            if isinstance(job, dict):
                sources.append((".gitlab-ci.yml", f"job {name}", _run_lines(job.get("script"))))
    for path, where, lines in sources:
        found = _first_test_line(lines)
        if found:
            return TestCommand(found[1], f"{path} ({where}): {found[0]}")
        for ln in lines:
            words = ln.split()
            if words[:1] == ["tox"] or words[:3] == ["python", "-m", "tox"]:
                t = _from_tox(files)
                if t:
                    return TestCommand(t.command, f"{path} ({where}) runs `{ln.strip()}`; {t.evidence}", t.requires)
            if words[:1] == ["nox"]:
                n = _from_nox(files)
                if n:
                    return TestCommand(n.command, f"{path} ({where}) runs `{ln.strip()}`; {n.evidence}")
            if words[:1] == ["make"] and len(words) > 1:
                m = _from_make(files, words[1])
                if m:
                    return TestCommand(m.command, f"{path} ({where}) runs `{ln.strip()}`; {m.evidence}")
    return None


def _ini(files: Files, path: str) -> configparser.ConfigParser:
    return files.ini(path)


def _from_tox(files: Files) -> TestCommand | None:
    for path, prefix in (("tox.ini", ""), ("setup.cfg", "")):
        cp = _ini(files, path)
        if path == "setup.cfg" and not cp.has_section("tox:tox"):
            continue
        envs = [s for s in cp.sections() if s == f"{prefix}testenv" or s.startswith(f"{prefix}testenv:")]
        for section in sorted(envs, key=lambda s: (s != "testenv", s)):
            commands = cp.get(section, "commands", fallback="")
            lines = [re.sub(r"^[\w,{}-]+:\s+", "", ln) for ln in commands.splitlines() if ln.strip()]  # factor prefix
            found = _first_test_line(lines)
            if found:
                deps = cp.get(section, "deps", fallback="") or cp.get("testenv", "deps", fallback="")
                reqs = tuple(re.sub(r"^[\w,{}-]+:\s+", "", d).strip() for d in deps.splitlines()
                             if d.strip() and not d.strip().startswith(("-", "{", "#", ".")) and "{" not in d)
                return TestCommand(found[1], f"{path} [{section}] commands: {found[0]}", tuple(r for r in reqs if r))
    return None


_NOX_RUN = re.compile(r"session\.run\(\s*((?:['\"][^'\"]*['\"]\s*,?\s*)+)")


def _from_nox(files: Files) -> TestCommand | None:
    text = files.read("noxfile.py")
    if not text:
        return None
    for m in _NOX_RUN.finditer(text):
        words = re.findall(r"['\"]([^'\"]*)['\"]", m.group(1))
        cmd = normalize(shlex.join(words))
        if cmd:
            return TestCommand(cmd, f"noxfile.py: session.run({', '.join(repr(w) for w in words)})")
    return None


def _from_make(files: Files, target: str | None = None) -> TestCommand | None:
    text = files.read("Makefile") or files.read("makefile")
    if not text:
        return None
    for name in ([target] if target else ["test", "tests", "check"]):
        m = re.search(rf"^{re.escape(name)}\s*:[^\n=]*\n((?:\t[^\n]*\n?)+)", text, re.M)
        if m:
            lines = [ln.strip().lstrip("@-") for ln in m.group(1).splitlines()]
            lines = [re.sub(r"\$\((?:PYTHON|PY)\)", "python", ln) for ln in lines]
            found = _first_test_line(lines)
            if found:
                return TestCommand(found[1], f"Makefile target {name}: {found[0]}")
    return None


def _from_layout(files: Files) -> TestCommand | None:
    py = [p for p in files.paths if p.endswith(".py")]
    tool = files.pyproject().get("tool", {})
    configured = ("pytest" in tool or files.exists("pytest.ini") or files.ini("setup.cfg").has_section("tool:pytest")
                  or files.ini("tox.ini").has_section("pytest"))
    if configured:
        where = ("pyproject.toml [tool.pytest.ini_options]" if "pytest" in tool else "pytest.ini"
                 if files.exists("pytest.ini") else "setup.cfg [tool:pytest]"
                 if files.ini("setup.cfg").has_section("tool:pytest") else "tox.ini [pytest]")
        return TestCommand(PYTEST, f"pytest configuration in {where}")
    nose = [p for p in py if re.fullmatch(r"tests_\w*\.py|test\w*\.py", p.rsplit("/", 1)[-1])
            and not re.fullmatch(r"test_\w*\.py", p.rsplit("/", 1)[-1])]
    if not any(is_test_path(p) for p in py) and not nose:
        return None
    if nose:
        return TestCommand(f"{PYTEST} {NOSE_FILES}", f"nose-style test modules ({', '.join(sorted(nose)[:3])}) and "
                           "no pytest configuration: pytest with nose's file patterns")
    if uses_pytest(files):
        return TestCommand(PYTEST, "test files that use pytest (or plain asserts), no configuration: pytest's defaults")
    start = next((d for d in TEST_DIRS if any(p.startswith(d + "/") for p in files.paths)), ".")
    return TestCommand(f"python -m unittest discover -v -s {start} -t .",
                       f"unittest test cases under {start}/, no pytest in sight")


def detect_checks(files: Files, test_command: str | None = None) -> list[Check]:
    """The checks the project's CI most likely runs, lint first (see the module docstring).
    ``test_command`` replaces the detected test command."""
    py = files.pyproject()
    tool = py.get("tool", {})
    pins = files.precommit_revs()
    checks: list[Check] = []
    ruff = "ruff" in tool or files.exists("ruff.toml") or files.exists(".ruff.toml") or "ruff" in pins
    if ruff:
        checks.append(Check("ruff", "ruff check --no-cache --no-fix .", "lint", "ruff check --no-cache --fix ."))
        ruff_cfg = tool.get("ruff", {}) if isinstance(tool.get("ruff"), dict) else {}
        if "format" in ruff_cfg or "hook:ruff-format" in pins:
            checks.append(Check("ruff format", "ruff format --no-cache --check .", "lint", "ruff format --no-cache ."))
    if "black" in tool or "black" in pins:
        checks.append(Check("black", "black --check .", "lint", "black ."))
    if ("isort" in tool or files.exists(".isort.cfg") or files.ini("setup.cfg").has_section("isort")
            or "isort" in pins):
        checks.append(Check("isort", "isort --check-only .", "lint", "isort ."))
    if not ruff and (files.exists(".flake8") or files.ini("setup.cfg").has_section("flake8")
                     or files.ini("tox.ini").has_section("flake8")):
        checks.append(Check("flake8", "flake8", "lint", None))
    if test_command:
        checks.append(Check("tests", test_command, "tests", source="given (--test-cmd or ci.repos.<repo>.test_command)"))
    else:
        found = find_test_command(files)
        if found is not None:
            checks.append(Check("tests", found.command, "tests", source=found.evidence, requires=found.requires))
    return checks
