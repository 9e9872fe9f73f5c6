"""What heald knows about a Python project: which checks its CI runs (tests, ruff, black, isort,
flake8), how to install its dependencies, where it declares them, which paths are tests or CI
configuration (never edited), and which distribution provides a missing module.

Detection reads the repository through git (:class:`Files`), never a work tree a sandbox may
have written. Formats read: ``pyproject.toml`` (PEP 621 ``[project]``, PEP 735
``[dependency-groups]``, ``[tool.ruff]``, ``[tool.black]``, ``[tool.isort]``,
``[tool.pytest.ini_options]``, ``[tool.poetry]``), ``setup.cfg`` / ``tox.ini`` sections,
``requirements*.txt`` and ``.pre-commit-config.yaml`` (hook revisions pin tool versions).
"""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from heald._paths import UnsafePath, parts_of, write_text

TEST_DIRS = ("tests", "test", "testing")
CI_CONFIG = (".github/", ".gitlab-ci.yml", ".circleci/", ".travis.yml", "azure-pipelines.yml", "Jenkinsfile",
             "tox.ini", "noxfile.py", ".pre-commit-config.yaml", ".buildkite/", "bitbucket-pipelines.yml",
             "appveyor.yml", ".gitlab/")
REQUIREMENT_FILES = ("requirements.txt", "requirements-dev.txt", "requirements_dev.txt", "requirements-test.txt",
                     "requirements_test.txt", "requirements-tests.txt", "dev-requirements.txt", "test-requirements.txt",
                     "requirements/dev.txt", "requirements/test.txt", "requirements/tests.txt",
                     "requirements/testing.txt", "requirements-testing.txt", "requirements_tests.txt",
                     "tests/requirements.txt", "test/requirements.txt", "testing/requirements.txt")
TEST_EXTRAS = ("test", "tests", "testing", "dev")

#: Import names whose distribution has another name (the common cases; otherwise the module's
#: top-level name, with ``_`` as ``-``, is tried).
DISTRIBUTIONS = {
    "yaml": "PyYAML", "PIL": "Pillow", "sklearn": "scikit-learn", "cv2": "opencv-python-headless",
    "bs4": "beautifulsoup4", "dateutil": "python-dateutil", "attr": "attrs", "dotenv": "python-dotenv",
    "jwt": "PyJWT", "OpenSSL": "pyOpenSSL", "Crypto": "pycryptodome", "magic": "python-magic",
    "serial": "pyserial", "usb": "pyusb", "git": "GitPython", "google.protobuf": "protobuf",
    "MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary", "zmq": "pyzmq", "docx": "python-docx",
    "pptx": "python-pptx", "win32api": "pywin32", "skimage": "scikit-image", "Levenshtein": "python-Levenshtein",
    "jose": "python-jose", "multipart": "python-multipart", "slugify": "python-slugify", "ldap": "python-ldap",
    "fitz": "PyMuPDF", "typing_extensions": "typing-extensions", "pkg_resources": "setuptools",
    "more_itertools": "more-itertools", "markupsafe": "MarkupSafe", "jinja2": "Jinja2", "itsdangerous": "itsdangerous",
}


def is_test_path(path: str) -> bool:
    """Is ``path`` part of the test suite (never edited by heald)?"""
    parts = path.split("/")
    name = parts[-1]
    return (any(p in TEST_DIRS for p in parts[:-1]) or name == "conftest.py"
            or (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py"))


def is_ci_config(path: str) -> bool:
    """Is ``path`` CI configuration (never edited by heald)?"""
    return any(path == c or (c.endswith("/") and path.startswith(c)) for c in CI_CONFIG)


def forbidden_changes(paths: Iterable[str], *, allow_tests: bool = False) -> list[str]:
    """The paths among ``paths`` heald must not change: CI configuration always, tests unless
    ``allow_tests`` (a formatter's whitespace changes)."""
    return [p for p in paths if is_ci_config(p) or (not allow_tests and is_test_path(p))]


@dataclass(frozen=True)
class Check:
    """One CI check heald reproduces: ``name`` (``tests``, ``ruff``, ``ruff format``, ``black``,
    ``isort``, ``flake8``), its shell ``command``, ``kind`` (``tests`` or ``lint``) and the
    ``fix`` command that repairs it, if any."""

    name: str
    command: str
    kind: str
    fix: str | None = None
    #: where the command came from (``tox.ini [testenv] commands: pytest``, ``--test-cmd``)
    source: str = ""
    #: extra requirements its declaration installs for it (tox ``deps``), installed best-effort
    requires: tuple[str, ...] = ()


class Files:
    """Read access to a repository at one commit: ``read(path) -> text | None`` and the list of
    its paths."""

    def __init__(self, read: Callable[[str], str | None], paths: Iterable[str]):
        self._read = read
        self.paths = set(paths)
        self._cache: dict[str, str | None] = {}

    def read(self, path: str) -> str | None:
        if path not in self._cache:
            self._cache[path] = self._read(path) if path in self.paths else None
        return self._cache[path]

    def exists(self, path: str) -> bool:
        return path in self.paths

    def pyproject(self) -> dict[str, Any]:
        text = self.read("pyproject.toml")
        if not text:
            return {}
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return {}

    def ini(self, path: str) -> configparser.ConfigParser:
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            cp.read_string(self.read(path) or "")
        except configparser.Error:
            pass
        return cp

    def precommit_revs(self) -> dict[str, str]:
        """Tool versions pinned by ``.pre-commit-config.yaml`` hooks: {"ruff": "0.4.4", …},
        plus which hook ids are used under ``hooks``."""
        text = self.read(".pre-commit-config.yaml")
        if not text:
            return {}
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            return {}
        found: dict[str, str] = {}
        for repo in data.get("repos") or []:
            if not isinstance(repo, dict):
                continue
            url, rev = str(repo.get("repo", "")), str(repo.get("rev", "")).lstrip("v")
            ids = {str(h.get("id")) for h in repo.get("hooks") or [] if isinstance(h, dict)}
            for tool, marker in (("ruff", "ruff-pre-commit"), ("black", "psf/black"), ("isort", "isort"),
                                 ("flake8", "flake8")):
                if marker in url and re.fullmatch(r"[\d.]+\w*", rev or "-"):
                    found[tool] = rev
            for hook in ids:
                found[f"hook:{hook}"] = "1"
        return found


def uses_pytest(files: Files) -> bool:
    tool = files.pyproject().get("tool", {})
    if "pytest" in tool or files.exists("pytest.ini") or files.exists("conftest.py"):
        return True
    if files.ini("setup.cfg").has_section("tool:pytest") or files.ini("tox.ini").has_section("pytest"):
        return True
    blob = "\n".join(files.read(p) or "" for p in sorted(files.paths) if is_test_path(p) and p.endswith(".py"))[:2_000_000]
    return "import pytest" in blob or "from pytest" in blob or "import unittest" not in blob


#: pytest options that take the next word as their value (so that word is not a path)
_PYTEST_VALUE_OPTS = {"-p", "-k", "-m", "-c", "-o", "-W", "-r", "--tb", "--maxfail", "--rootdir", "--confcutdir",
                      "--basetemp", "--deselect", "--ignore", "--ignore-glob", "--durations", "--log-level",
                      "--import-mode", "--override-ini", "--pyargs", "--timeout", "--capture", "--color",
                      "--junitxml", "--junit-xml", "-n", "--dist"}


def narrowed(check: Check, test_ids: list[str]) -> tuple[str, bool]:
    """The command that runs only ``test_ids`` (pytest node ids) of a tests check, and whether
    it was narrowed. Only a single ``python -m pytest`` command is narrowed: the paths it names
    are replaced by the ids (appending them would run those paths whole as well); a command
    with shell operators, another runner, or ``-k``/``--pyargs`` selection runs whole."""
    if check.kind != "tests" or not test_ids:
        return check.command, False
    try:
        words = shlex.split(check.command)
    except ValueError:
        return check.command, False
    if any(w in ("&&", "||", ";", "|") or w.endswith(";") for w in words) or "pytest" not in words:
        return check.command, False
    head, rest = words[:words.index("pytest") + 1], words[words.index("pytest") + 1:]
    if head[:2] != ["python", "-m"] and head != ["pytest"] or "-k" in rest or "--pyargs" in rest:
        return check.command, False
    kept: list[str] = []
    takes_value = False
    for w in rest:
        if takes_value:
            kept.append(w)
            takes_value = False
        elif w.startswith("-"):
            kept.append(w)
            takes_value = w in _PYTEST_VALUE_OPTS
        # else: a path the command names; the node ids replace it
    ids = [t for t in test_ids[:50] if not t.startswith("-")]
    if not ids:
        return check.command, False
    return shlex.join([*head, *kept, *ids]), True


# -- installing ----------------------------------------------------------------------------------

def install_script(files: Files, python: str, checks: list[Check], custom: str | None = None,
                   own: str = ".heald") -> str:
    """The shell script of the dependency-install phase: a virtual environment in
    ``<own>/venv`` (``own``: heald's directory for the tree, outside it; relative paths are
    relative to the tree), the project (editable, with its test extras), its
    requirement files and dependency groups, then any check tool still missing (pinned as
    ``.pre-commit-config.yaml`` pins it)."""
    venv = shlex.quote(f"{own}/venv")
    vpy = shlex.quote(f"{own}/venv/bin/python")
    pip = f"{vpy} -m pip install --quiet --disable-pip-version-check"
    lines = ["set -eu", f"[ -x {vpy} ] || {python} -m venv {venv}"]
    py = files.pyproject()
    groups = [g for g in (py.get("dependency-groups") or {}) if g in TEST_EXTRAS]
    if custom:
        lines.append(f"export VIRTUAL_ENV={venv} PATH={venv}/bin:$PATH\n{custom}")
    else:
        if groups:
            lines.append(f"{pip} --upgrade 'pip>=25.1'")
        if py.get("project") or py.get("build-system") or files.exists("setup.py") or files.exists("setup.cfg"):
            extras = [e for e in (py.get("project", {}).get("optional-dependencies") or {}) if e in TEST_EXTRAS]
            if not extras:
                extras = [e for e in (files.ini("setup.cfg")["options.extras_require"].keys()
                                      if files.ini("setup.cfg").has_section("options.extras_require") else [])
                          if e in TEST_EXTRAS]
            target = f".[{','.join(extras)}]" if extras else "."
            lines.append(f"{pip} -e {shlex.quote(target)}")
        for req in REQUIREMENT_FILES:
            if files.exists(req):
                lines.append(f"{pip} -r {shlex.quote(req)}")
        for g in groups:
            lines.append(f"{pip} --group {shlex.quote(g)}")
    pins = files.precommit_revs()
    for c in checks:
        if c.requires and not custom:  # tox deps: best-effort, old pins may not install on today's Python
            reqs = " ".join(shlex.quote(r) for r in c.requires)
            lines.append(f"{pip} {reqs} || echo 'heald: the declared test requirements did not all install' >&2")
        if c.kind == "tests" and "pytest" in c.command:
            lines.append(f"{vpy} -c 'import pytest' 2>/dev/null || {pip} pytest")
            # per-test timeouts (PYTEST_TIMEOUT in the run's environment); best-effort
            lines.append(f"{vpy} -c 'import pytest_timeout' 2>/dev/null || {pip} pytest-timeout "
                         f"|| echo 'heald: pytest-timeout did not install: no per-test timeout' >&2")
        tool = c.name.split()[0]
        if c.kind == "lint":
            spec = f"{tool}=={pins[tool]}" if tool in pins else tool
            lines.append(f"[ -x {venv}/bin/{tool} ] || {pip} {shlex.quote(spec)}")
    return "\n".join(dict.fromkeys(lines))


# -- missing modules -------------------------------------------------------------------------

def is_local_module(files: Files, module: str) -> bool:
    """Is ``module``'s top-level package part of the repository itself (then a missing module
    is a code error, not a missing dependency)?"""
    top = module.split(".")[0]
    for p in files.paths:
        parts = p.split("/")
        if parts[0] == "src":
            parts = parts[1:]
        if parts and (parts[0] == top or parts[0] == f"{top}.py"):
            return True
    return False


def distribution_candidates(module: str) -> list[str]:
    """Distributions that may provide ``module``, most likely first."""
    out = []
    for key in (module, module.split(".")[0]):
        if key in DISTRIBUTIONS:
            out.append(DISTRIBUTIONS[key])
    top = module.split(".")[0]
    out += [top, top.replace("_", "-")]
    return list(dict.fromkeys(out))


# -- the dependency declaration ----------------------------------------------------------------

@dataclass
class DeclarationEdit:
    """Where a requirement was added: ``path`` and the ``requirement`` line."""

    path: str
    requirement: str
    notes: list[str] = field(default_factory=list)


class UnsupportedDeclaration(RuntimeError):
    """heald cannot add a requirement to how this project declares its dependencies."""


def add_requirement(tree: Path, files: Files, distribution: str, version: str, scope: str = "runtime") -> DeclarationEdit:
    """Add ``distribution>=version`` to the project's dependencies, in place in the (fresh,
    heald-made) work tree ``tree``, preserving the file's formatting.

    ``scope`` ``test`` (only the tests import it) goes to the test dependencies: a test extra of
    ``[project.optional-dependencies]``, a ``[dependency-groups]`` test group, or a test
    requirements file (and its ``.in`` source when pip-compile made it); with none of those, to
    the runtime dependencies like ``runtime``: PEP 621 ``[project].dependencies`` (or the
    requirements file ``[tool.setuptools.dynamic]`` names), Poetry's
    ``[tool.poetry.dependencies]``, ``setup.py``'s ``install_requires`` (edited with libcst,
    :func:`add_install_requires`; its ``requirements.txt`` when setup.py reads that file),
    ``setup.cfg``'s ``[options] install_requires``, or the ``requirements.txt`` of a project
    without packaging. Never a dev/test requirements file for a runtime dependency. Raises
    UnsupportedDeclaration when none applies (said once: the remedy is not retried)."""
    import tomlkit

    requirement = f"{distribution}>={version}"
    py = files.pyproject()
    if scope == "test":
        extras = (py.get("project") or {}).get("optional-dependencies") or {}
        groups = py.get("dependency-groups") or {}
        for table, names in ((("project", "optional-dependencies"), extras), (("dependency-groups",), groups)):
            key = next((k for k in TEST_EXTRAS if k in names), None)
            if key is not None:
                doc = tomlkit.parse(files.read("pyproject.toml") or "")
                node = doc
                for part in table:
                    node = node[part]
                node[key].append(requirement)
                _write(tree, "pyproject.toml", tomlkit.dumps(doc))
                return DeclarationEdit("pyproject.toml", requirement, [f"{'.'.join(table)}.{key}"])
        for req in sorted(REQUIREMENT_FILES[1:], key=lambda r: "test" not in r):  # test files before dev files
            if files.exists(req):
                edit = _append_line(tree, files, req, requirement)
                source = req[:-4] + ".in"
                if files.exists(source):
                    _append_line(tree, files, source, requirement)
                    edit.notes.append(source)
                return edit
    project = py.get("project")
    if isinstance(project, dict):
        dynamic = project.get("dynamic") or []
        if "dependencies" in dynamic:
            spec = (py.get("tool", {}).get("setuptools", {}).get("dynamic", {}).get("dependencies") or {})
            req_files = spec.get("file") if isinstance(spec, dict) else None
            if req_files:
                path = req_files[0] if isinstance(req_files, list) else req_files
                try:
                    parts_of(path)
                except UnsafePath as exc:
                    raise UnsupportedDeclaration(f"[tool.setuptools.dynamic] dependencies names the file {path!r}, "
                                                 f"which heald does not edit: {exc}") from None
                return _append_line(tree, files, path, requirement)
            raise UnsupportedDeclaration("[project] declares dependencies as dynamic without a requirements file")
        doc = tomlkit.parse(files.read("pyproject.toml") or "")
        deps = doc["project"].get("dependencies")
        if deps is None:
            doc["project"]["dependencies"] = tomlkit.array()
            deps = doc["project"]["dependencies"]
        deps.append(requirement)
        _write(tree, "pyproject.toml", tomlkit.dumps(doc))
        return DeclarationEdit("pyproject.toml", requirement)
    poetry = py.get("tool", {}).get("poetry")
    if isinstance(poetry, dict):
        doc = tomlkit.parse(files.read("pyproject.toml") or "")
        doc["tool"]["poetry"].setdefault("dependencies", tomlkit.table())
        doc["tool"]["poetry"]["dependencies"][distribution] = f">={version}"
        _write(tree, "pyproject.toml", tomlkit.dumps(doc))
        return DeclarationEdit("pyproject.toml", f'{distribution} = ">={version}"')
    setup_py = files.read("setup.py")
    if setup_py is not None:
        if re.search(r"""['"]requirements\.txt['"]""", setup_py) and files.exists("requirements.txt"):
            edit = _append_line(tree, files, "requirements.txt", requirement)
            edit.notes.append("setup.py reads its install_requires from it")
            return edit
        text, where = add_install_requires(setup_py, requirement)
        _write(tree, "setup.py", text)
        return DeclarationEdit("setup.py", requirement, [where])
    cfg_text = files.read("setup.cfg")
    if cfg_text is not None:
        edited = _setup_cfg_requires(cfg_text, requirement)
        if edited is None:
            raise UnsupportedDeclaration("setup.cfg has no [options] install_requires, and the project declares its "
                                         "runtime dependencies nowhere else heald edits")
        _write(tree, "setup.cfg", edited)
        return DeclarationEdit("setup.cfg", requirement, ["[options] install_requires"])
    if files.exists("requirements.txt"):  # an application without packaging: its requirements are its runtime
        return _append_line(tree, files, "requirements.txt", requirement)
    raise UnsupportedDeclaration("the project declares its runtime dependencies nowhere heald can edit "
                                 "(no [project], Poetry, setup.py, setup.cfg or requirements.txt)")


def add_install_requires(source: str, requirement: str) -> tuple[str, str]:
    """``source`` (a ``setup.py``) with ``requirement`` added to the ``install_requires`` of its
    ``setup(...)`` call, edited with libcst (a concrete syntax tree: comments, quotes and layout
    are kept), and where it went: the call's list literal, the module-level list a name there
    refers to, or a new ``install_requires=[…]`` argument. Raises UnsupportedDeclaration when
    the file does not parse, has no or several ``setup()`` calls, or computes the value (a
    function call, ``**kwargs``): heald does not guess into code."""
    import libcst as cst

    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise UnsupportedDeclaration(f"setup.py does not parse ({str(exc).splitlines()[0]})") from None

    def string(like: cst.List | None) -> cst.SimpleString:
        quote = '"'
        for el in like.elements if like is not None else []:
            if isinstance(el.value, cst.SimpleString):
                quote = el.value.value[-1]
                break
        return cst.SimpleString(f"{quote}{requirement}{quote}")

    def appended(lst: cst.List) -> cst.List:
        value = string(lst)
        els = list(lst.elements)
        last = els[-1] if els else None
        if last is not None and isinstance(last.comma, cst.Comma):  # a trailing comma: keep the list's layout
            # the line break before an element is the whitespace after the comma before it (or after "[")
            sep = els[-2].comma.whitespace_after if len(els) > 1 and isinstance(els[-2].comma, cst.Comma) \
                else lst.lbracket.whitespace_after
            if isinstance(sep, cst.ParenthesizedWhitespace):
                sep = sep.with_changes(first_line=cst.TrailingWhitespace(), empty_lines=[])  # not its comment
            els[-1] = last.with_changes(comma=last.comma.with_changes(whitespace_after=sep))
            return lst.with_changes(elements=[*els, cst.Element(value, comma=last.comma)])
        return lst.with_changes(elements=[*els, cst.Element(value)])

    class Setup(cst.CSTTransformer):
        def __init__(self) -> None:
            self.calls = 0
            self.where = ""
            self.name: str | None = None

        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
            f = updated.func
            name = f.value if isinstance(f, cst.Name) else f.attr.value if isinstance(f, cst.Attribute) else None
            if name != "setup":
                return updated
            self.calls += 1
            args = list(updated.args)
            for i, arg in enumerate(args):
                if arg.keyword is not None and arg.keyword.value == "install_requires":
                    if isinstance(arg.value, cst.List):
                        self.where = "setup(install_requires=[…])"
                        args[i] = arg.with_changes(value=appended(arg.value))
                        return updated.with_changes(args=args)
                    if isinstance(arg.value, cst.Name):
                        self.name = arg.value.value
                        return updated
                    raise UnsupportedDeclaration("setup.py computes install_requires; heald does not edit code that "
                                                 "computes dependencies")
            if any(a.star for a in args):
                raise UnsupportedDeclaration("setup.py passes setup() **kwargs and no install_requires; heald does "
                                             "not know where the dependencies are")
            self.where = "setup(install_requires=[…]) (new)"
            new = cst.Arg(keyword=cst.Name("install_requires"), value=cst.List([cst.Element(string(None))]),
                          equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                whitespace_after=cst.SimpleWhitespace("")))
            return updated.with_changes(args=[*args, new])

    class Named(cst.CSTTransformer):
        def __init__(self, name: str) -> None:
            self.name = name
            self.found = 0

        def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
            if (len(updated.targets) == 1 and isinstance(updated.targets[0].target, cst.Name)
                    and updated.targets[0].target.value == self.name and isinstance(updated.value, cst.List)):
                self.found += 1
                return updated.with_changes(value=appended(updated.value))
            return updated

    setup = Setup()
    edited = module.visit(setup)
    if setup.calls != 1:
        raise UnsupportedDeclaration(f"setup.py has {setup.calls} setup() calls; heald edits exactly one")
    if setup.name is not None:
        named = Named(setup.name)
        edited = module.visit(named)
        if named.found != 1:
            raise UnsupportedDeclaration(f"setup.py's install_requires is {setup.name}, which is not one list literal "
                                         f"assigned once; heald does not edit it")
        setup.where = f"{setup.name} = […] (setup.py's install_requires)"
    return edited.code, setup.where


def _setup_cfg_requires(text: str, requirement: str) -> str | None:
    """``setup.cfg`` text with ``requirement`` appended to ``[options] install_requires`` (a
    line of its own, indented like the others), or None when it declares none."""
    lines = text.splitlines(keepends=True)
    section = ""
    for i, line in enumerate(lines):
        m = re.match(r"^\[([^\]]+)\]", line)
        if m:
            section = m.group(1).strip()
            continue
        if section == "options" and re.match(r"^install_requires\s*[=:]", line):
            j = i + 1
            while j < len(lines) and lines[j].strip() and lines[j][:1] in (" ", "\t"):
                j += 1
            indent = re.match(r"^(\s+)", lines[i + 1]).group(1) if i + 1 < j else "    "  # type: ignore[union-attr]
            if not lines[j - 1].endswith("\n"):
                lines[j - 1] += "\n"
            lines.insert(j, f"{indent}{requirement}\n")
            return "".join(lines)
    return None

def _append_line(tree: Path, files: Files, path: str, requirement: str) -> DeclarationEdit:
    text = files.read(path) or ""
    if text and not text.endswith("\n"):
        text += "\n"
    _write(tree, path, text + requirement + "\n")
    return DeclarationEdit(path, requirement)


def _write(tree: Path, path: str, text: str) -> None:
    """Write a file of the work tree, only inside it and never through a symbolic link at any
    level (a repository can commit one pointing at a host file): :func:`heald._paths.write_text`.
    Raises UnsupportedDeclaration with the reason."""
    try:
        write_text(tree, path, text)
    except UnsafePath as exc:
        raise UnsupportedDeclaration(f"heald does not write {path!r}: {exc}") from None
