"""Localizing a failing test's cause without a model: the suspect files and functions, ranked.

In the manner of Agentless' hierarchical localization (Xia et al., 2024: files, then functions,
then lines), but from evidence instead of a model's guesses:

1. **files** — every ``.py`` file of the tree outside the tests, scored by the evidence that
   names it: a traceback frame in it (pytest's ``path:line: in func``/``path:line: Error`` and
   Python's ``File "path", line N, in func``), a module the failing test imports from, its name
   matching the test file's (``tests/test_calc.py`` → ``calc.py``), a change to it in the
   recent commits (the diff);
2. **functions** — the functions and methods of those files (``ast``), scored by a traceback
   frame inside them (the deepest frame outside the tests counts most), a call from the failing
   test's body, their name in the assertion or exception message, a recent change inside them;
3. **excerpts** — the source of the best functions (with line numbers), within a token budget
   (4 characters a token), for a human or a model to read.

Everything here reads files and text; nothing is run and nothing in a file or a log is taken
as an instruction (a file's text only ever becomes an excerpt, quoted).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from heald import _paths
from heald._git import GitError
from heald.ci.project import is_ci_config, is_test_path
from heald.config import HealdConfig

log = structlog.get_logger("heald.ci")

#: pytest's long traceback (``path:line: in func``, ``path:line: ErrorType``) and Python's own.
_PYTEST_FRAME = re.compile(r"^(?P<path>[^\s:][^:\n]*\.py):(?P<line>\d+): (?:in (?P<func>[\w<>.]+)|(?P<err>\w+))")
_PY_FRAME = re.compile(r'^\s*File "(?P<path>[^"\n]+\.py)", line (?P<line>\d+), in (?P<func>[\w<>.]+)')
_ERROR_LINE = re.compile(r"^E\s+(?P<text>.+)$|^(?P<exc>\w+(?:Error|Exception)\b.*)$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_SKIP_DIRS = {".git", ".heald", ".tox", ".nox", ".venv", "venv", "build", "dist", "node_modules", "__pycache__",
              "site-packages", ".eggs"}
#: Python words that say nothing about where a bug is.
_NOISE = frozenset({"assert", "AssertionError", "None", "True", "False", "self", "return", "def", "class", "import",
                    "from", "where", "and", "not", "the", "with", "for", "Error", "Exception", "error", "line"})
MAX_FILES = 3000
MAX_FILE_BYTES = 400_000


@dataclass(frozen=True)
class Frame:
    """One traceback frame: ``path`` relative to the tree, ``line`` (1-based), ``func``."""

    path: str
    line: int
    func: str


@dataclass
class Suspect:
    """A ranked suspect: a file (``function`` empty) or a function/method (``function`` its
    qualified name, ``start``/``end`` its lines, 1-based inclusive); ``score`` and the
    ``reasons`` (the evidence that named it)."""

    path: str
    function: str = ""
    start: int = 0
    end: int = 0
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def add(self, points: float, reason: str) -> None:
        self.score += points
        if reason not in self.reasons:
            self.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "function": self.function, "start": self.start, "end": self.end,
                "score": round(self.score, 2), "reasons": self.reasons[:6]}

    def where(self) -> str:
        return f"{self.path}:{self.start}-{self.end} {self.function}" if self.function else self.path


@dataclass
class Excerpt:
    """Lines ``start``..``end`` (1-based, inclusive) of ``path``, numbered, as text."""

    path: str
    start: int
    end: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "start": self.start, "end": self.end, "text": self.text}


@dataclass
class Localization:
    """The ranked ``files`` and ``functions`` (best first), the ``excerpts`` chosen within the
    token budget, the ``evidence`` read (error lines, the frames in the tree)."""

    files: list[Suspect] = field(default_factory=list)
    functions: list[Suspect] = field(default_factory=list)
    excerpts: list[Excerpt] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)

    def as_dict(self, top: int = 10) -> dict[str, Any]:
        return {"files": [s.as_dict() for s in self.files[:top]],
                "functions": [s.as_dict() for s in self.functions[:top]],
                "excerpts": [e.as_dict() for e in self.excerpts], "evidence": self.evidence[:20]}

    def summary(self, top: int = 5) -> str:
        """One line per suspect, for an escalation: ``path:start-end function (reasons)``."""
        rows = self.functions[:top] or self.files[:top]
        return "\n".join(f"{i}. {s.where()} — {'; '.join(s.reasons[:3])}" for i, s in enumerate(rows, 1))


def frames(output: str, tree: Path) -> list[Frame]:
    """The traceback frames of ``output`` (pytest's long format and Python's), in order, with
    paths made relative to ``tree``; frames outside it (the standard library, site-packages,
    heald's own environment under ``.heald``) are left out."""
    out: list[Frame] = []
    root = str(tree.resolve()) if tree.exists() else str(tree)
    for raw in output.splitlines():
        line = raw.rstrip()
        m = _PYTEST_FRAME.match(line.strip()) or _PY_FRAME.match(line)
        if not m:
            continue
        rel = _relative(m.group("path"), root)
        if rel is None:
            continue
        func = m.groupdict().get("func") or ""
        out.append(Frame(rel, int(m.group("line")), func))
    return out


def _relative(path: str, root: str) -> str | None:
    p = path.strip()
    if p.startswith("/"):
        if not p.startswith(root.rstrip("/") + "/"):
            return None
        p = p[len(root.rstrip("/")) + 1:]
    parts = Path(p).parts
    if not parts or ".." in parts or any(d in _SKIP_DIRS for d in parts[:-1]):
        return None
    return "/".join(parts)


def error_lines(output: str, limit: int = 30) -> list[str]:
    """The assertion and exception lines of a pytest/unittest output (``E   …`` lines,
    ``…Error: …`` lines), in order, without repeats."""
    found: list[str] = []
    for raw in output.splitlines():
        m = _ERROR_LINE.match(raw.rstrip())
        if m:
            text = (m.group("text") or m.group("exc") or "").strip()
            if text and text not in found:
                found.append(text[:300])
        if len(found) >= limit:
            break
    return found


def source_files(tree: Path) -> list[str]:
    """The tree's ``.py`` files outside tests, CI configuration, virtual environments and
    build directories, relative; never through a symbolic link (a repository's link could point
    anywhere on the host)."""
    out: list[str] = []
    stack = [tree]
    while stack and len(out) < MAX_FILES:
        d = stack.pop()
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.is_symlink():
                continue
            rel = p.relative_to(tree).as_posix()
            if p.is_dir():
                if p.name not in _SKIP_DIRS and not p.name.startswith(".") and not p.name.endswith(".egg-info"):
                    stack.append(p)
            elif p.suffix == ".py" and not is_test_path(rel) and not is_ci_config(rel):
                out.append(rel)
    return sorted(out)


def read_text(tree: Path, rel: str) -> str | None:
    """The text of ``rel`` inside ``tree`` (None when missing, larger than ``MAX_FILE_BYTES``,
    reached through a link anywhere on the way, or not UTF-8); see :mod:`heald._paths`."""
    try:
        return _paths.read_text(tree, rel, limit=MAX_FILE_BYTES)
    except (_paths.UnsafePath, OSError, UnicodeDecodeError):
        return None


def functions_of(text: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, last line) of every function and method in ``text``
    (decorators included); [] when it does not parse."""
    try:
        mod = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    found: list[tuple[str, int, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                found.append((f"{prefix}{child.name}", start, child.end_lineno or child.lineno))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(mod, "")
    return found


def _test_body(tree: Path, test_id: str) -> tuple[str, set[str], set[str]]:
    """The failing test's file, the names its function uses (called or read) and the modules the
    file imports from; empty sets when the file or the function cannot be read."""
    path, _, rest = test_id.partition("::")
    text = read_text(tree, path) if path.endswith(".py") else None
    if text is None:
        return path, set(), set()
    try:
        mod = ast.parse(text)
    except (SyntaxError, ValueError):
        return path, set(), set()
    modules: set[str] = set()
    for node in ast.walk(mod):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
    wanted = [p.split("[")[0] for p in rest.split("::") if p]
    target: ast.AST = mod
    for name in wanted:
        nxt = next((n for n in ast.iter_child_nodes(target) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                                ast.ClassDef)) and n.name == name), None)
        if nxt is None:
            break
        target = nxt
    names: set[str] = set()
    for node in ast.walk(target):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return path, names, modules


def _module_files(module: str, files: set[str]) -> list[str]:
    """The files of the tree that are ``module`` (``a.b`` → ``a/b.py``, ``a/b/__init__.py``,
    also under ``src/`` or any other top-level directory)."""
    rel = module.replace(".", "/")
    out = []
    for f in files:
        if f.endswith(f"{rel}.py") or f.endswith(f"{rel}/__init__.py"):
            head = f[: -len(f"{rel}.py")] if f.endswith(f"{rel}.py") else f[: -len(f"{rel}/__init__.py")]
            if head == "" or head.endswith("/"):
                out.append(f)
    return out


def localize(tree: Path, output: str, failing_tests: Iterable[str], *, recent: dict[str, set[int]] | None = None,
             budget_tokens: int = 3000, top_functions: int = 8) -> Localization:
    """Rank the suspect files and functions for the failing tests (see the module docstring).

    ``tree``: the work tree at the failing commit. ``output``: the failing run's output (pytest
    or unittest, with tracebacks). ``failing_tests``: pytest node ids. ``recent``: the recent
    diff as {path: changed line numbers in the new version} (empty set: the whole file).
    ``budget_tokens``: bound on the excerpts (4 characters a token). Never raises for what the
    tree or the output holds."""
    tests = list(dict.fromkeys(failing_tests))
    recent = recent or {}
    files = source_files(tree)
    fileset = set(files)
    loc = Localization(evidence=error_lines(output))
    file_s: dict[str, Suspect] = {f: Suspect(f) for f in files}
    fn_s: dict[tuple[str, str], Suspect] = {}
    texts: dict[str, str] = {}
    defs: dict[str, list[tuple[str, int, int]]] = {}

    def defs_of(path: str) -> list[tuple[str, int, int]]:
        if path not in defs:
            text = read_text(tree, path)
            texts[path] = text or ""
            defs[path] = functions_of(text) if text else []
        return defs[path]

    def fn(path: str, name: str, start: int, end: int) -> Suspect:
        key = (path, name)
        if key not in fn_s:
            fn_s[key] = Suspect(path, name, start, end)
        return fn_s[key]

    def enclosing(path: str, line: int) -> tuple[str, int, int] | None:
        inside = [d for d in defs_of(path) if d[1] <= line <= d[2]]
        return max(inside, key=lambda d: d[1]) if inside else None

    # 1. traceback frames: the deepest frame outside the tests counts most
    in_tree = [f for f in frames(output, tree) if f.path in fileset]
    for depth, fr in enumerate(reversed(in_tree)):
        weight = 10.0 / (1 + 0.5 * depth)
        file_s[fr.path].add(weight, f"traceback frame {fr.path}:{fr.line} in {fr.func}")
        loc_fn = enclosing(fr.path, fr.line)
        if loc_fn is not None:
            fn(fr.path, *loc_fn).add(weight, f"traceback: line {fr.line} is inside it")
    # 2. what the failing tests import and call
    called: set[str] = set()
    for tid in tests:
        tpath, names, modules = _test_body(tree, tid)
        called |= names
        for module in modules:
            for f in _module_files(module, fileset):
                file_s[f].add(3.0, f"{tpath} imports {module}")
        stem = Path(tpath).stem.removeprefix("test_").removesuffix("_test")
        for f in files:
            if stem and Path(f).stem == stem:
                file_s[f].add(2.0, f"named like the test file {tpath}")
    # 3. identifiers in the assertion/exception messages
    said = {w for line in loc.evidence for w in _IDENT.findall(line)} - _NOISE
    # 4. the recent diff
    for path in recent:
        if path in file_s:
            file_s[path].add(2.0, "changed in the recent commits")
    ranked_files = sorted(file_s.values(), key=lambda s: -s.score)
    candidates = [s.path for s in ranked_files if s.score > 0][:40] or [s.path for s in ranked_files][:40]
    if called or said:
        # a called name is searched in every file, not only the scored ones: the test may reach
        # it through a package's re-export
        for path in files:
            for name, start, end in defs_of(path):
                short = name.rsplit(".", 1)[-1]
                if short in called and not short.startswith("test"):
                    fn(path, name, start, end).add(4.0, "called by the failing test")
                    file_s[path].add(1.0, f"defines {short}, which the failing test calls")
                if short in said:
                    fn(path, name, start, end).add(2.0, f"named in the failure message ({short})")
    for path in candidates:
        for name, start, end in defs_of(path):
            changed = recent.get(path)
            if changed is not None and (not changed or any(start <= n <= end for n in changed)):
                fn(path, name, start, end).add(2.0, "changed in the recent commits")
    for s in fn_s.values():  # a function inherits a share of its file's evidence
        s.score += 0.3 * file_s[s.path].score
    loc.files = sorted((s for s in file_s.values() if s.score > 0), key=lambda s: (-s.score, s.path))
    loc.functions = sorted(fn_s.values(), key=lambda s: (-s.score, s.path, s.start))
    loc.excerpts = excerpts(tree, loc.functions[:top_functions], budget_tokens, texts)
    return loc


def excerpts(tree: Path, suspects: list[Suspect], budget_tokens: int, texts: dict[str, str] | None = None
             ) -> list[Excerpt]:
    """The numbered source of ``suspects`` (best first) until ``budget_tokens`` (4 characters
    a token) is spent; a function too long for what is left is cut to its first lines."""
    budget = budget_tokens * 4
    out: list[Excerpt] = []
    texts = texts if texts is not None else {}
    for s in suspects:
        if budget <= 200:
            break
        text = texts.get(s.path)
        if text is None:
            text = texts[s.path] = read_text(tree, s.path) or ""
        lines = text.splitlines()
        end = min(s.end, len(lines))
        rendered: list[str] = []
        used = 0
        for n in range(s.start, end + 1):
            row = f"{n:>5} {lines[n - 1]}"
            if used + len(row) + 1 > budget:
                break
            rendered.append(row)
            used += len(row) + 1
        if rendered:
            out.append(Excerpt(s.path, s.start, s.start + len(rendered) - 1, "\n".join(rendered)))
            budget -= used
    return out


def recent_changes(diff: str) -> dict[str, set[int]]:
    """{path: changed line numbers in the new version} from a unified diff (``git diff -U0``
    output); a file added or deleted whole maps to an empty set."""
    out: dict[str, set[int]] = {}
    path = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            target = line[4:].strip()
            path = target[2:] if target.startswith("b/") else None
            if path:
                out.setdefault(path, set())
        elif line.startswith("@@") and path:
            m = re.match(r"@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@", line)
            if m:
                start, count = int(m.group(1)), int(m.group(2) or "1")
                out[path].update(range(start, start + max(count, 1)))
    return out


def endpoint(config: HealdConfig) -> tuple[str, str, str | None] | None:
    """(base_url, model, key) of the configured LLM endpoint, or None when there is none
    (``llm.base_url``/``$HEALD_LLM_BASE_URL`` and ``llm.model``/``$HEALD_LLM_MODEL``)."""
    base, model, key = config.llm.resolved()
    if not base or not model or not config.ci.forward_fix.enabled:
        return None
    return base, model, key


#: Verdicts with failing tests and nothing to revert: a forward fix is the only way forward.
FORWARD_VERDICTS = ("never_passed", "red_everywhere", "regression_unrevertable")


def localize_investigation(ws: Any, inv: Any) -> Localization | None:
    """Localize an investigation's failing tests (no model) and keep the result in its facts
    (``suspects``: one line per suspect; ``localization``: JSON) and summary, so that the
    escalation carries it; with an LLM endpoint configured, ``forward_fix`` is ``ready`` (the
    runbook ``ci-forward-fix`` then offers the remedy, for a human to approve). Returns the
    localization, or None when the investigation has no failing tests or no test output.
    Never raises for the repository's content."""
    if inv.verdict not in FORWARD_VERDICTS or not inv.failing_tests or not inv.bad:
        return None
    output = next((s.output for s in inv.steps if s.phase == "reproduce" and not s.ok and s.output), "")
    if not output:
        return None
    cfg = ws.config.ci.forward_fix
    try:
        wt = ws.cache.add_worktree(inv.bad, "localize")  # only read by heald: nothing runs in it
        try:
            try:
                parent = ws.cache.resolve(f"{inv.bad}~{cfg.recent_commits}") if cfg.recent_commits else inv.bad
            except GitError:
                parent = ws.cache.git("rev-list", "--max-parents=0", inv.bad, timeout=60).split()[0]
            diff = ws.cache.git("diff", "-U0", "--no-color", parent, inv.bad, timeout=120) if parent != inv.bad else ""
            loc = localize(wt.path, output, inv.failing_tests, recent=recent_changes(diff),
                           budget_tokens=cfg.context_tokens)
        finally:
            wt.remove()
    except (GitError, OSError) as exc:  # the escalation goes on without the suspects
        log.warning("ci.localize_failed", repo=ws.job.repo, error=str(exc)[:300])
        return None
    if not loc.files:
        return loc
    inv.facts["suspects"] = loc.summary()
    inv.facts["localization"] = json.dumps(loc.as_dict(5))
    top = loc.functions[:3] or loc.files[:3]
    inv.summary += " Suspect code (from the tracebacks, the test and the recent diff): " + "; ".join(
        s.where() for s in top) + "."
    if endpoint(ws.config) is not None:
        inv.facts["forward_fix"] = "ready"
    return loc
