"""What a human (or a repair step) needs from a failing test run: each failing test with its
assertion or exception, and the suspect code locations.

Suspects come from two places, best first: the frames of the failures' tracebacks that lie in
the project's own non-test files (pytest's ``path:line: in func`` / ``path:line: Error`` and
Python's ``File "path", line N, in func``), and the files the culprit commit changed (or, when
no culprit is known, the newest commits'). A file both in a traceback and in the change comes
first. Output formats read: pytest's long and short (``-rfE``) reports, CPython tracebacks,
unittest's ``FAIL:``/``ERROR:`` blocks.

Used by :mod:`heald.ci.investigate` for escalations; a forward-fix step can call
:func:`suspect_locations` and :func:`failure_reasons` on the same output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from heald.ci.project import is_test_path
from heald.diagnose.signatures.ci import failing_ids

_PYTEST_FRAME = re.compile(r"^(?P<path>[\w./\-]+\.py):(?P<line>\d+):(?: in (?P<func>\S+)|\s+\w+)")
_PY_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+\.py)", line (?P<line>\d+)(?:, in (?P<func>\S+))?')
_SUMMARY = re.compile(r"^(?:FAILED|ERROR) (?P<id>\S+(?:\[.*?\])?) - (?P<why>.+)$")
_E_LINE = re.compile(r"^E\s{3}(?P<text>.+)$")


@dataclass(frozen=True)
class Suspect:
    """A code location to look at: ``path`` (relative to the project's root), ``line`` (1-based;
    None for a whole changed file), ``why`` (``traceback of tests/t.py::test_x``, ``changed by
    abc123``, or both), and ``func`` when a traceback names it."""

    path: str
    line: int | None
    why: str
    func: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relative(path: str, roots: Sequence[str]) -> str | None:
    p = PurePosixPath(path)
    if p.is_absolute():
        for root in roots:
            try:
                return str(p.relative_to(root))
            except ValueError:
                continue
        return None
    return str(p)


def failure_reasons(output: str) -> dict[str, str]:
    """Each failing test id (as :func:`heald.diagnose.signatures.ci.failing_ids` reads it) with
    its assertion or exception: the reason of pytest's short summary line, else the first
    ``E`` line of its report, else unittest's last traceback line; '' when the output shows none."""
    failed, collect = failing_ids(output)
    reasons: dict[str, str] = dict.fromkeys([*failed, *collect], "")
    for line in output.splitlines():
        m = _SUMMARY.match(line.strip())
        if m and m.group("id") in reasons and not reasons[m.group("id")]:
            reasons[m.group("id")] = m.group("why")[:300]
    current: str | None = None
    for line in output.splitlines():
        header = re.match(r"^_{3,} (?:ERROR collecting )?(?P<name>\S.*?) _{3,}$", line)
        if header:
            name = header.group("name")
            current = next((t for t in reasons if t.endswith(name.replace(".", "::")) or t.endswith(name)
                            or name.split(".")[-1] == t.split("::")[-1]), None)
            continue
        e = _E_LINE.match(line)
        if e and current and not reasons[current]:
            reasons[current] = e.group("text").strip()[:300]
    return reasons


def suspect_locations(output: str, *, roots: Sequence[str] = (), changed: Iterable[str] = (),
                      changed_by: str = "", limit: int = 10) -> list[Suspect]:
    """The suspect code locations of a failing run (see the module docstring). ``roots``: the
    absolute paths of the tree the run saw (frames under them are made relative; frames
    elsewhere, such as installed packages, are left out); ``changed``: the files the culprit or
    the newest commits changed, described as ``changed_by``. Test files and configuration are
    never suspects of a traceback (the test shows where it failed, not why)."""
    changed_files = [c for c in changed if c.endswith(".py") and not is_test_path(c)]
    seen: dict[tuple[str, int | None], Suspect] = {}
    for line in output.splitlines():
        m = _PYTEST_FRAME.match(line.strip()) or _PY_FRAME.match(line)
        if not m:
            continue
        rel = _relative(m.group("path"), roots)
        if rel is None or rel.startswith(("..", "/")) or "site-packages/" in rel or is_test_path(rel):
            continue
        key = (rel, int(m.group("line")))
        if key not in seen:
            why = "in a failure's traceback" + (f"; changed by {changed_by}" if rel in changed_files else "")
            seen[key] = Suspect(rel, int(m.group("line")), why, m.groupdict().get("func"))
    found = sorted(seen.values(), key=lambda s: (s.path not in changed_files, list(seen).index((s.path, s.line))))
    for c in changed_files:
        if not any(s.path == c for s in found):
            found.append(Suspect(c, None, f"changed by {changed_by}" if changed_by else "recently changed"))
    return found[:limit]
