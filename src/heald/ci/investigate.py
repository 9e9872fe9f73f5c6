"""Reproducing a CI failure in the sandbox and finding what caused it.

:func:`investigate` is the reproduce stage of a CI incident. It prepares a work tree at the
failing commit, installs the dependencies (in the sandbox with no network: packages come through
heald's package-index proxy), runs the
project's checks, classifies the failing output with the signature knowledge base, and reaches
a **verdict**:

- ``missing_dependency`` — a test run fails with ``ModuleNotFoundError`` for a module the
  repository does not contain, and a distribution that provides it installs (its version is
  kept);
- ``lint`` — only lint/format checks fail and each has an autofix (ruff, black, isort);
- ``flaky`` — the failing tests pass when re-run at the same commit (no code change);
- ``regression`` — a passing commit was found (given, or by walking back the first-parent
  history ``1, 2, 4, …`` commits up to ``ci.max_lookback_commits``), ``git bisect run`` in the
  sandbox named the first bad commit, the failing tests fail again at it and pass at its parent
  (the flake check), the failing test existed before it, and its revert applies cleanly and
  touches no test or CI file;
- do no harm: ``red_everywhere`` (the failure is there at every commit tried: environment
  drift), ``never_passed`` (the culprit added the failing test), ``regression_unrevertable``
  (culprit known, but reverting it would conflict or edit tests/CI), ``not_reproduced``,
  ``install_failed``, ``unresolved`` (with the reason).

Every sandboxed command is kept with its result (:class:`heald.ci.runner.Step`), so the
diagnosis and the pull request can show what was run and what it said.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from heald._git import GitError
from heald.ci import CiJob
from heald.ci.project import (
    Check,
    Files,
    detect_checks,
    distribution_candidates,
    forbidden_changes,
    install_script,
    is_local_module,
    is_test_path,
    narrowed,
)
from heald.ci.repo import RepoCache, Worktree
from heald.ci.runner import Runner, Step
from heald.config import HealdConfig
from heald.diagnose.signatures import classify
from heald.diagnose.signatures.ci import test_runs
from heald.sandbox import Limits, Sandbox, open_sandbox

log = structlog.get_logger("heald.ci")

_MISSING = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?(?P<module>[\w.]+)'?")


@dataclass
class Investigation:
    """What reproducing a CI failure found (see the module docstring). ``facts`` are the
    strings runbooks and pull requests use (``culprit_sha``, ``module``, ``lint_tools``, …);
    ``before`` is each check's result at the failing commit; ``steps`` every sandboxed command."""

    job: CiJob
    bad: str = ""
    verdict: str = "unresolved"
    summary: str = ""
    category: str = "unknown"
    checks: list[Check] = field(default_factory=list)
    failing: list[str] = field(default_factory=list)
    failing_tests: list[str] = field(default_factory=list)
    excerpt: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    test_runs: int = 0
    bisect_runs: int = 0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"repo": self.job.repo, "url": self.job.url, "bad": self.bad, "good": self.job.good,
                "branch": self.job.branch, "verdict": self.verdict, "summary": self.summary,
                "category": self.category, "checks": [c.__dict__ for c in self.checks], "failing": self.failing,
                "failing_tests": self.failing_tests, "excerpt": self.excerpt, "facts": self.facts,
                "before": self.before, "steps": [s.as_dict(1500) for s in self.steps], "test_runs": self.test_runs,
                "bisect_runs": self.bisect_runs, "duration_s": round(self.duration_s, 2)}


class Workspace:
    """The parts CI work needs for one repository: the cache, the sandbox and a runner."""

    def __init__(self, config: HealdConfig, job: CiJob, sandbox: Sandbox | None = None, token: str | None = None):
        from heald.ci.repo import auth_env

        self.config = config
        self.job = job
        self.sandbox = sandbox or open_sandbox(config.sandbox)
        wd = config.ci_work_dir
        self.cache = RepoCache(wd, job.repo, job.url, timeout=config.ci.git_timeout_seconds,
                               env=auth_env(job.url, token, config.ci.github.host), max_worktrees=config.ci.max_worktrees)
        self.runner = Runner(self.sandbox, config.ci, self.cache, config.ci.pip_cache_dir or wd / "index-cache",
                             Limits.from_config(config.sandbox))

    def files(self, sha: str) -> Files:
        paths = self.cache.git("ls-tree", "-r", "--name-only", sha, timeout=60).splitlines()
        return Files(lambda p: self.cache.show(sha, p), paths)

    def checks(self, files: Files) -> list[Check]:
        return detect_checks(files, self.job.test_command)

    def install(self, wt: Worktree, files: Files, checks: list[Check], phase: str = "install") -> Step:
        script = install_script(files, self.config.ci.python, checks, self.job.install_command)
        return self.runner.install(wt, script, wt.base, phase=phase)

    def run_checks(self, wt: Worktree, checks: list[Check], phase: str, commit: str) -> dict[str, Step]:
        return {c.name: self.runner.check(wt, c, phase=phase, commit=commit) for c in checks}


def failed_test_ids(output: str) -> list[str]:
    """Failing test ids from a pytest or unittest run's output (its short summary)."""
    for c in test_runs(output):
        if c.details.get("tests"):
            return list(dict.fromkeys(c.details["tests"]))
    return []


_FRAME = re.compile(r'^(?:File "(?P<a>[^"]+\.py)", line \d+|(?P<b>\S+\.py):\d+: in )')


def importer_of(output: str, tree: Path) -> str | None:
    """The file (relative to ``tree``) whose import raised the first ModuleNotFoundError: the
    last traceback frame before it (pytest's ``path:line: in`` or Python's ``File "…"``)."""
    last = None
    for line in output.splitlines():
        m = _FRAME.match(line.strip())
        if m:
            last = m.group("a") or m.group("b")
        elif _MISSING.search(line):
            break
    if last is None:
        return None
    p = Path(last)
    if p.is_absolute():
        try:
            p = p.relative_to(tree)
        except ValueError:
            return None
    return str(p)


def excerpt_of(output: str, lines: int = 40) -> str:
    """The part of a log that shows the failure: the lines the knowledge base cites, with the
    closing lines of the run."""
    found = classify(output)
    cited = [ln for c in found[:3] for ln in c.evidence]
    tail = output.rstrip().splitlines()[-lines:]
    keep = list(dict.fromkeys([*cited[:15], *tail]))
    return "\n".join(keep)[-6000:]


def summarize_results(results: dict[str, Step]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, s in results.items():
        out[name] = {"command": s.command, "exit": s.exit, "ok": s.ok, "duration_s": s.duration_s,
                     "failed_tests": failed_test_ids(s.output) if not s.ok else []}
    return out


def investigate(config: HealdConfig, job: CiJob, *, sandbox: Sandbox | None = None, token: str | None = None) -> Investigation:
    """Reproduce and explain one CI failure (see the module docstring). Never raises for the
    repository's own failures; raises SandboxUnavailable when no sandbox works (heald then
    refuses: it never runs the work unsandboxed)."""
    t0 = time.monotonic()
    ws = Workspace(config, job, sandbox, token)
    inv = Investigation(job=job)
    try:
        _investigate(ws, inv)
    except GitError as exc:
        inv.verdict, inv.category = "unresolved", "unknown"
        inv.summary = f"heald could not get the repository or its commits: {exc}"
    inv.steps = ws.runner.steps
    from heald.ci.repair import localize_investigation  # forward fixes (issue 16): suspects for the escalation

    localize_investigation(ws, inv)
    inv.test_runs = ws.runner.test_runs
    inv.duration_s = time.monotonic() - t0
    log.info("ci.investigated", repo=job.repo, verdict=inv.verdict, test_runs=inv.test_runs,
             seconds=round(inv.duration_s, 1))
    return inv


def _investigate(ws: Workspace, inv: Investigation) -> None:
    job = ws.job
    ws.cache.update(want=[job.bad, *([job.good] if job.good else [])])
    bad = inv.bad = ws.cache.resolve(job.bad)
    good = ws.cache.resolve(job.good) if job.good else None
    inv.facts.update({"bad_sha": bad, "bad_short": bad[:12]})
    files = ws.files(bad)
    inv.checks = checks = ws.checks(files)
    if not checks:
        inv.verdict = "unresolved"
        inv.summary = "heald found no tests and no lint configuration to reproduce the failure with; give a test command"
        return
    inv.facts["test_command"] = next((c.command for c in checks if c.kind == "tests"), "")
    wt = ws.cache.add_worktree(bad, "investigate")
    installed = ws.install(wt, files, checks)
    if not installed.ok:
        found = classify(installed.output)
        inv.verdict = "install_failed"
        inv.category = found[0].category if found else "dependency_install"
        inv.excerpt = excerpt_of(installed.output)
        inv.summary = f"installing the dependencies at {bad[:12]} fails ({installed.describe()}): nothing heald can fix by itself"
        return
    results = ws.run_checks(wt, checks, "reproduce", bad)
    inv.before = summarize_results(results)
    failing = [c for c in checks if not results[c.name].ok]
    inv.failing = [c.name for c in failing]
    if not failing:
        inv.verdict, inv.category = "not_reproduced", "flaky_test"
        inv.summary = (f"every check passes at {bad[:12]} in the sandbox ({', '.join(c.name for c in checks)}): the failure "
                       f"does not reproduce (flaky, or specific to the CI machine)")
        return
    tests = next((c for c in failing if c.kind == "tests"), None)
    if tests is not None:
        _tests_failing(ws, inv, wt, files, tests, results[tests.name], bad, good)
        return
    lint = [c for c in failing if c.kind == "lint"]
    inv.excerpt = "\n\n".join(f"$ {c.command}\n{excerpt_of(results[c.name].output, 25)}" for c in lint)[-6000:]
    inv.category = "lint_error"
    if all(c.fix for c in lint):
        inv.verdict = "lint"
        inv.facts["lint_tools"] = ",".join(c.name for c in lint)
        inv.summary = (f"{', '.join(c.name for c in lint)} fail{'s' if len(lint) == 1 else ''} at {bad[:12]} and "
                       f"{'has an autofix' if len(lint) == 1 else 'have autofixes'}; the tests pass")
    else:
        inv.verdict = "unresolved"
        inv.summary = f"{', '.join(c.name for c in lint if not c.fix)} fails and has no autofix"


def _tests_failing(ws: Workspace, inv: Investigation, wt: Worktree, files: Files, tests: Check, first: Step,
                   bad: str, good: str | None) -> None:
    cfg = ws.config.ci
    output = first.output
    inv.excerpt = excerpt_of(output)
    inv.failing_tests = failed_test_ids(output)
    inv.facts["failing_tests"] = " ".join(inv.failing_tests[:20])
    found = classify(output)
    inv.category = found[0].category if found else "test_failure"
    missing = _MISSING.search(output)
    if missing and not is_local_module(files, missing.group("module")):
        module = missing.group("module")
        inv.category = "missing_module"
        inv.facts["module"] = module
        importer = importer_of(output, wt.path)
        scope = "test" if importer and is_test_path(importer) else "runtime"
        inv.facts["dependency_scope"] = scope
        if importer:
            inv.facts["imported_by"] = importer
        for dist in distribution_candidates(module):
            step, version = ws.runner.pip_install(wt, dist, module, bad)
            if version:
                inv.verdict = "missing_dependency"
                inv.facts.update({"distribution": dist, "version": version})
                inv.summary = (f"the tests fail at {bad[:12]} with ModuleNotFoundError: no module named {module!r}; the "
                               f"distribution {dist} {version} provides it and installs, but the project does not declare it")
                return
        inv.verdict = "unresolved"
        inv.summary = f"no module named {module!r}, and no distribution heald tried provides it: {distribution_candidates(module)}"
        return
    command, narrow = narrowed(tests, inv.failing_tests)
    inv.facts["check_command"] = command
    passes = 0
    for _ in range(cfg.flake_reruns):
        if ws.runner.check(wt, tests, phase="rerun", commit=bad, command=command).ok:
            passes += 1
    if passes:
        inv.verdict, inv.category = "flaky", "flaky_test"
        inv.facts["reruns"] = f"{passes} of {cfg.flake_reruns}"
        inv.summary = (f"{', '.join(inv.failing_tests) or tests.command} failed at {bad[:12]} and then passed {passes} of "
                       f"{cfg.flake_reruns} re-runs at the same commit: a flaky test; heald changes no code for it")
        return
    _find_culprit(ws, inv, wt, tests, command, narrow, bad, good)


def _find_culprit(ws: Workspace, inv: Investigation, wt: Worktree, tests: Check, command: str, narrow: bool,
                  bad: str, good: str | None) -> None:
    cfg = ws.config.ci
    runner = ws.runner
    ok_codes = (0, 4, 5) if narrow else (0,)

    def passes(step: Step) -> bool:
        return not step.timed_out and step.exit in ok_codes

    lowest_bad = bad
    if good is not None:
        if not ws.cache.is_ancestor(good, bad):
            inv.verdict = "unresolved"
            inv.summary = f"the known-good commit {good[:12]} is not an ancestor of {bad[:12]}"
            return
        if not passes(runner.at(wt, good, command, phase="search")):
            inv.verdict, inv.category = "red_everywhere", "environment_drift"
            inv.facts["good_sha"] = good
            inv.summary = (f"{_what(inv, command)} also fails at the known-good commit {good[:12]}: the failure is not a "
                           f"change between {good[:12]} and {bad[:12]} (environment drift or a test that never passed); "
                           f"no revert")
            return
    else:
        chain = ws.cache.first_parent_chain(bad, cfg.max_lookback_commits)
        tried: list[str] = []
        i = 1
        while i < len(chain):
            sha = chain[i]
            tried.append(sha)
            if passes(runner.at(wt, sha, command, phase="search")):
                good = sha
                break
            lowest_bad = sha
            i *= 2
        if good is None and len(chain) > 1 and chain[-1] not in tried:  # the oldest commit within reach
            tried.append(chain[-1])
            if passes(runner.at(wt, chain[-1], command, phase="search")):
                good = chain[-1]
            else:
                lowest_bad = chain[-1]
        if good is None:
            inv.verdict, inv.category = "red_everywhere", "environment_drift"
            reach = "the first commit" if len(chain) <= cfg.max_lookback_commits else f"{len(chain) - 1} commits back"
            inv.facts["commits_tried"] = " ".join(s[:12] for s in tried)
            inv.summary = (f"{_what(inv, command)} fails at every commit tried, back to {reach} "
                           f"({len(tried)} commits): nothing recent broke it (environment drift, or a test that never "
                           f"passed); no revert")
            return
    inv.facts["good_sha"] = good
    n = ws.cache.count(good, lowest_bad)
    inv.facts["commits_in_range"] = str(ws.cache.count(good, bad))
    if n > cfg.max_bisect_commits:
        inv.verdict = "unresolved"
        inv.summary = f"{n} commits between {good[:12]} and {lowest_bad[:12]}: more than ci.max_bisect_commits ({cfg.max_bisect_commits})"
        return
    if n == 1:
        culprit: str | None = lowest_bad
        inv.facts["bisect_log"] = f"none needed: {lowest_bad[:10]} fails and its parent {good[:10]} passes"
    else:
        outcome = runner.bisect(wt, good, lowest_bad, command, missing_ok=narrow)
        inv.bisect_runs = len(outcome.runs)
        inv.facts["bisect_log"] = " ".join(f"{s[:10]}:{'good' if rc in ok_codes else 'bad'}" for s, rc in outcome.runs)
        culprit = outcome.culprit
    if culprit is None:
        inv.verdict = "unresolved"
        inv.summary = f"bisection between {good[:12]} and {lowest_bad[:12]} named no first bad commit"
        return
    commit = ws.cache.commit(culprit)
    parent = ws.cache.resolve(f"{culprit}^")
    inv.facts.update({"culprit_sha": culprit, "culprit_short": culprit[:12], "culprit_author": commit.author,
                      "culprit_date": commit.authored_at.isoformat(), "culprit_age": commit.age(),
                      "culprit_subject": commit.subject, "culprit_parent": parent})
    again = runner.at(wt, culprit, command, phase="culprit")
    before = runner.at(wt, parent, command, phase="parent")
    runner.at(wt, bad, "true", phase="restore", tests=False)
    inv.facts["flake_check"] = f"at the culprit: {again.describe()}; at its parent: {before.describe()}"
    if passes(again) or not passes(before):
        inv.verdict = "unresolved"
        inv.summary = (f"bisection named {culprit[:12]}, but re-running at it ({again.describe()}) and at its parent "
                       f"({before.describe()}) does not confirm it: the failure is not deterministic")
        return
    new_tests = _tests_added_by(ws.cache, parent, inv.failing_tests) if narrow else []
    if new_tests:
        inv.verdict, inv.category = "never_passed", "test_never_passed"
        inv.summary = (f"{', '.join(new_tests)} did not exist before {culprit[:12]} ({commit.subject!r} by "
                       f"{commit.author}): the test has never passed; reverting would delete it, so heald does not")
        return
    changed = ws.cache.changed_files(culprit)
    blocked = forbidden_changes(changed)
    conflict = _revert_conflicts(ws.cache, bad, culprit)
    inv.category = "regression"
    if blocked or conflict:
        inv.verdict = "regression_unrevertable"
        why = f"reverting it would change tests or CI configuration ({', '.join(blocked[:5])})" if blocked else conflict
        inv.summary = (f"{culprit[:12]} ({commit.subject!r} by {commit.author}, {commit.age()} old) broke "
                       f"{_what(inv, command)}; {why}, so heald does not revert it")
        return
    inv.verdict = "regression"
    inv.summary = (f"{culprit[:12]} ({commit.subject!r} by {commit.author}, {commit.age()} old) broke "
                   f"{_what(inv, command)}: it fails at that commit and passes at its parent {parent[:12]}; "
                   f"finding it among {inv.facts['commits_in_range']} commits took {runner.test_runs} test runs "
                   f"({inv.bisect_runs} in git bisect)")


def _what(inv: Investigation, command: str) -> str:
    return ", ".join(inv.failing_tests[:3]) + (" …" if len(inv.failing_tests) > 3 else "") if inv.failing_tests \
        else f"`{command}`"


def _tests_added_by(cache: RepoCache, parent: str, test_ids: list[str]) -> list[str]:
    """The failing pytest node ids whose test function did not exist at ``parent``. A test of a
    class the file imported, or of a class there with base classes (pytest collects inherited
    tests under the subclass's file), counts as existing when that class was there: a culprit
    that added such a test changed test files, and a revert of it is refused for that anyway."""
    added = []
    for tid in test_ids:
        path, _, rest = tid.partition("::")
        parts = rest.split("::")
        name = parts[-1].split("[")[0]
        text = cache.show(parent, path)
        if text is None:
            added.append(tid)
            continue
        if not name or re.search(rf"\bdef {re.escape(name)}\s*\(", text):
            continue
        cls = parts[0] if len(parts) > 1 else ""
        imported = re.search(rf"^\s*(?:from\s+\S+\s+)?import\b[^\n]*\b{re.escape(cls)}\b", text, re.M)
        subclass = re.search(rf"^\s*class\s+{re.escape(cls)}\s*\(\s*\w", text, re.M)  # may inherit the test
        if cls and (imported or subclass):
            continue
        added.append(tid)
    return added


def _revert_conflicts(cache: RepoCache, base: str, culprit: str) -> str | None:
    """None when reverting ``culprit`` on top of ``base`` applies cleanly and changes something;
    else why not. A revert git merges into no change at all (later commits re-made or moved the
    culprit's lines) would undo nothing, so it counts as not applying."""
    wt = cache.add_worktree(base, "revert-check")
    try:
        wt.git("revert", "--no-commit", culprit, timeout=120)
        if not wt.git("diff", "--cached", "--name-only", "HEAD").strip():
            return f"its revert on {base[:12]} changes nothing (later commits carry the same change)"
        return None
    except GitError as exc:
        return f"its revert does not apply cleanly on {base[:12]} ({str(exc)[-200:]})"
    finally:
        wt.remove()
