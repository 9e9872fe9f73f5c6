"""Making a fix and proving it in the sandbox.

:func:`build_fix` makes one fix commit in a fresh work tree on top of the failing commit —
``revert`` (the culprit), ``add_dependency`` (declare the missing distribution with a version
that installs) or ``lint`` (the project's own autofixers: ``ruff check --fix``, ``ruff format``,
``black``, ``isort``) — then validates it: the dependencies are installed again and *every*
check runs in the sandbox. The fix is valid when each check it is meant to repair (the tests the
investigation found failing, or the lint tools it ran) now passes, no check that passed before
fails, and no test fails that did not fail before (the failing tests pass and no other test
breaks); another check that already failed may keep failing the same way (the pull request shows
it), never worse. A fix never changes CI configuration, and only a formatter may
touch test files (whitespace and imports; the tests then run to prove nothing changed).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from heald._git import GitError
from heald.ci import CiJob
from heald.ci.investigate import Workspace, summarize_results
from heald.ci.project import Check, UnsupportedDeclaration, add_requirement, forbidden_changes
from heald.ci.runner import Step
from heald.config import HealdConfig
from heald.sandbox import Sandbox

KINDS = ("revert", "add_dependency", "lint")
LINT_ORDER = ("isort", "ruff", "ruff format", "black")


@dataclass
class FixResult:
    """A fix commit and its validation: ``ok`` when valid (see the module docstring),
    ``reason`` says why or why not; ``before``/``after`` are each check's result at the failing
    commit and at the fix; ``steps`` the sandboxed commands of this attempt."""

    kind: str
    ok: bool
    reason: str
    base: str = ""
    sha: str = ""
    message: str = ""
    changed: list[str] = field(default_factory=list)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    after: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    worktree: str = ""
    #: the fix cannot be made here at all (heald cannot declare the dependency, the fix would
    #: touch tests): trying again fails the same way
    deterministic: bool = False


def validate(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
             targets: set[str] | None = None, baseline: Collection[str] = ()) -> tuple[bool, str]:
    """Is the fix valid, comparing each check before and after (see the module docstring)?

    ``before``/``after``: {check name: {"ok", "exit", "failed_tests", ...}} as
    :func:`summarize_results` gives them. ``targets``: the checks the fix is meant to repair
    (None: every check that failed). A failing check outside the targets (a formatter the
    project's pinned version no longer agrees with, say) may keep failing as it did — the pull
    request shows it — but must not fail worse. ``baseline``: test ids that fail at the baseline
    too (the environment's) or are quarantined: a target check whose only remaining failures are
    among them counts as repaired. Returns (valid, why)."""
    problems, fixed, unchanged = [], [], []
    for name, b in before.items():
        a = after.get(name)
        if a is None:
            problems.append(f"{name} did not run after the fix")
            continue
        target = targets is None or name in targets
        if b["ok"] and not a["ok"]:
            problems.append(f"{name} passed before and fails after the fix (exit {a['exit']})")
        elif not b["ok"] and a["ok"]:
            fixed.append(name)
        elif not b["ok"] and not a["ok"]:
            new = sorted(set(a["failed_tests"]) - set(b["failed_tests"]))
            still = sorted(set(a["failed_tests"]) & set(b["failed_tests"]) - set(baseline))
            if new:
                problems.append(f"{name}: tests that passed now fail: {', '.join(new[:5])}")
            elif not target:
                unchanged.append(name)
            elif not a["failed_tests"] or still:
                problems.append(f"{name} still fails" + (f": {', '.join(still[:5])}" if still else f" (exit {a['exit']})"))
            else:
                fixed.append(name)
    if problems:
        return False, "; ".join(problems)
    if not fixed:
        return False, "no failing check passes after the fix"
    why = f"now passing: {', '.join(fixed)}; nothing that passed before fails"
    if unchanged:
        why += f"; {', '.join(unchanged)} failed before and fail the same way after (not what this fix repairs)"
    return True, why


def build_fix(config: HealdConfig, job: CiJob, kind: str, params: dict[str, str], *,
              before: dict[str, dict[str, Any]] | None = None, sandbox: Sandbox | None = None,
              token: str | None = None, trailer: str = "", baseline: Collection[str] = ()) -> FixResult:
    """Make and validate one fix (see the module docstring). ``params``: ``commit`` for
    ``revert``; ``distribution`` and ``version`` for ``add_dependency``; ``tools``
    (comma-separated check names) for ``lint``. ``before`` is each check's result at the
    failing commit (from the reproduction); measured again when not given. Never raises for
    an invalid fix (``ok`` False); raises GitError when the repository cannot be reached."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    ws = Workspace(config, job, sandbox, token)
    ws.cache.update(want=[job.bad, *([params["commit"]] if kind == "revert" else [])])
    base = ws.cache.resolve(job.bad)
    files = ws.files(base)
    checks = ws.checks(files)
    result = FixResult(kind=kind, ok=False, reason="", base=base)
    if before is None:
        wt0 = ws.cache.add_worktree(base, "before")
        if not ws.install(wt0, files, checks).ok:
            result.reason = "the dependencies do not install at the failing commit"
            return _done(result, ws)
        before = summarize_results(ws.run_checks(wt0, checks, "reproduce", base))
    result.before = before
    wt = ws.cache.add_worktree(base, "fix")
    result.worktree = str(wt.path)
    ci = config.ci
    try:
        if kind == "revert":
            culprit = ws.cache.commit(params["commit"])
            wt.git("revert", "--no-commit", culprit.sha, timeout=120)
            result.message = (f'Revert "{culprit.subject}"\n\nThis reverts commit {culprit.sha}, which broke the tests '
                              f"(found by bisection and confirmed in heald's sandbox).{trailer}")
            result.sha = wt.commit_tracked(result.message, ci.author_name, ci.author_email)
        elif kind == "add_dependency":
            edit = add_requirement(wt.path, files, params["distribution"], params["version"],
                                   params.get("scope", "runtime"))
            result.message = (f"Declare the dependency {edit.requirement}\n\nThe tests import {params.get('module', '?')}, "
                              f"which {params['distribution']} provides, but the project did not declare it "
                              f"({', '.join([edit.path, *edit.notes])}).{trailer}")
            result.sha = wt.commit_tracked(result.message, ci.author_name, ci.author_email)
        if kind != "lint":
            files = ws.files(result.sha)
            checks = ws.checks(files)
        installed = ws.install(wt, files, checks, phase="install" if kind == "lint" else "validate-install")
        if not installed.ok:
            result.reason = f"the dependencies do not install with the fix ({installed.describe()})"
            return _done(result, ws)
        if kind == "lint":
            wanted = _lint_tools(params)
            fixers = sorted((c for c in checks if c.kind == "lint" and c.fix and c.name in wanted),
                            key=lambda c: LINT_ORDER.index(c.name) if c.name in LINT_ORDER else 99)
            if not fixers:
                result.reason = f"none of {sorted(wanted)} is a lint check with an autofix in this project"
                return _done(result, ws)
            for c in fixers:
                ws.runner.fix(wt, c.fix or "", base)
            result.message = (f"Fix lint: {', '.join(c.fix or '' for c in fixers)}\n\nThe project's own autofixers, run in "
                              f"heald's sandbox; the tests pass unchanged.{trailer}")
            result.sha = wt.commit_tracked(result.message, ci.author_name, ci.author_email)
    except (GitError, UnsupportedDeclaration) as exc:
        result.reason = str(exc)
        result.deterministic = isinstance(exc, UnsupportedDeclaration)
        return _done(result, ws)
    result.changed = wt.changed_paths(base)
    blocked = forbidden_changes(result.changed, allow_tests=(kind == "lint"))
    if blocked:
        result.reason = f"the fix would change tests or CI configuration, which heald never does: {', '.join(blocked[:5])}"
        result.deterministic = True
        return _done(result, ws)
    result.after = summarize_results(ws.run_checks(wt, checks, "validate", result.sha))
    result.ok, result.reason = validate(before, result.after, _targets(kind, params, checks), baseline)
    return _done(result, ws)


def _targets(kind: str, params: dict[str, str], checks: list[Check]) -> set[str] | None:
    """The checks a fix of ``kind`` is meant to repair: the lint tools it ran; for a revert or a
    declared dependency, the test checks (what the bisection or the ModuleNotFoundError was
    found in); None (every failing check) when there is none."""
    if kind == "lint":
        return _lint_tools(params) or None
    return {c.name for c in checks if c.kind == "tests"} or None


def _lint_tools(params: dict[str, str]) -> set[str]:
    """The check names in a lint fix's ``tools`` parameter (comma-separated, e.g. ``ruff,black``)."""
    return {t.strip() for t in params.get("tools", "").split(",") if t.strip()}


def _done(result: FixResult, ws: Workspace) -> FixResult:
    result.steps = list(ws.runner.steps)
    return result
