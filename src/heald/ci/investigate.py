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
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from heald._git import GitError
from heald.ci import CiJob
from heald.ci.project import (
    Check,
    Files,
    distribution_candidates,
    forbidden_changes,
    install_script,
    is_local_module,
    is_test_path,
    narrowed,
)
from heald.ci.repo import RepoCache, Worktree
from heald.ci.runner import Runner, Step
from heald.ci.suspects import Suspect, failure_reasons, suspect_locations
from heald.ci.testcommand import detect_checks
from heald.config import HealdConfig
from heald.diagnose.signatures import classify
from heald.diagnose.signatures.ci import failing_ids
from heald.sandbox import Limits, Sandbox, open_sandbox

log = structlog.get_logger("heald.ci")

_NOT_FOUND = re.compile(r"^ERROR: not found: (\S+)", re.MULTILINE)
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
    #: for a human: failing tests with their assertion/exception, baseline failures, suspect
    #: code locations (:func:`escalation_of`)
    escalation: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"repo": self.job.repo, "url": self.job.url, "bad": self.bad, "good": self.job.good,
                "branch": self.job.branch, "verdict": self.verdict, "summary": self.summary,
                "category": self.category, "checks": [c.__dict__ for c in self.checks], "failing": self.failing,
                "failing_tests": self.failing_tests, "excerpt": self.excerpt, "facts": self.facts,
                "before": self.before, "steps": [s.as_dict(1500) for s in self.steps], "test_runs": self.test_runs,
                "bisect_runs": self.bisect_runs, "duration_s": round(self.duration_s, 2),
                "escalation": self.escalation}


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
        script = install_script(files, self.config.ci.python, checks, self.job.install_command, own=str(wt.own))
        return self.runner.install(wt, script, wt.base, phase=phase)

    def run_checks(self, wt: Worktree, checks: list[Check], phase: str, commit: str) -> dict[str, Step]:
        return {c.name: self.runner.check(wt, c, phase=phase, commit=commit) for c in checks}


def failed_test_ids(output: str) -> list[str]:
    """Failing test ids from a pytest or unittest run's output (its short summary), with the
    test files that did not collect; every one, uncapped."""
    failed, collect = failing_ids(output)
    return [*failed, *collect]


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
    from heald.ci.localize import localize_investigation  # forward fixes (issue 16): suspects for the escalation

    localize_investigation(ws, inv)
    inv.test_runs = ws.runner.test_runs
    try:
        inv.escalation = escalation_of(ws, inv)
    except GitError as exc:  # the facts stay; only the suspects from git are missing
        inv.escalation = {"error": str(exc)[:300]}
    inv.duration_s = time.monotonic() - t0
    log.info("ci.investigated", repo=job.repo, verdict=inv.verdict, test_runs=inv.test_runs,
             seconds=round(inv.duration_s, 1))
    return inv


def escalation_of(ws: Workspace, inv: Investigation) -> dict[str, Any]:
    """What a human needs when heald escalates (and a pull request shows): ``failing_tests``
    [{id, error}] (the regression first, baseline failures marked), ``baseline_failures``,
    ``quarantined``, ``suspects`` [{path, line, why, func}] (:mod:`heald.ci.suspects`: tracebacks
    and the culprit's change, else the newest commits'), ``test_command`` and where it came from."""
    tests = next((c for c in inv.checks if c.kind == "tests"), None)
    first = next((s for s in inv.steps if s.phase == "reproduce" and tests is not None and s.command == tests.command),
                 None)
    output = first.output if first is not None and not first.ok else ""
    reasons = failure_reasons(output)
    baseline = set(inv.facts.get("baseline_failures", "").split())
    held = set(inv.facts.get("quarantined", "").split())
    failing = [{"id": t, "error": reasons.get(t, ""),
                **({"baseline": True} if t in baseline else {}), **({"quarantined": True} if t in held else {})}
               for t in sorted(reasons, key=lambda t: (t in baseline or t in held))]
    culprit = inv.facts.get("culprit_sha")
    if culprit:
        changed, by = ws.cache.changed_files(culprit), culprit[:12]
    elif inv.bad:
        newest = ws.cache.first_parent_chain(inv.bad, 3)
        changed = list(dict.fromkeys(p for sha in newest for p in ws.cache.changed_files(sha)))
        by = f"the newest commits ({', '.join(s[:10] for s in newest)})"
    else:
        changed, by = [], ""
    roots = [str(ws.cache.trees)]  # frames under any of heald's work trees of this repository
    suspects = suspect_locations(output, roots=roots, changed=changed, changed_by=by)
    suspects = [Suspect(_strip_tree(s.path), s.line, s.why, s.func) for s in suspects]
    return {"failing_tests": failing[:50], "baseline_failures": sorted(baseline)[:50], "quarantined": sorted(held),
            "suspects": [s.as_dict() for s in suspects],
            "test_command": tests.command if tests else None, "test_command_source": tests.source if tests else None}


def _strip_tree(path: str) -> str:
    """A path relative to the trees directory (``<name>/<name>/pkg/x.py``) as the project's."""
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == parts[1] and "-" in parts[0]:
        return "/".join(parts[2:])
    return path


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
    inv.facts["test_command_source"] = next((c.source for c in checks if c.kind == "tests"), "")
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
        inv.verdict, inv.category = "not_reproduced", "not_reproduced"
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


def is_quarantined(test_id: str, quarantine: Iterable[str]) -> bool:
    """Is ``test_id`` on the quarantine list: equal to an entry, or below one (an entry
    ``tests/test_net.py`` or ``tests/test_net.py::TestA`` covers the tests in it; a trailing
    ``*`` is a prefix)?"""
    for q in quarantine:
        stem = q.rstrip("*")
        if test_id == q or (stem and test_id.startswith(stem) and (q.endswith("*") or test_id[len(stem):][:2] in ("::", "[", "."))):
            return True
    return False


def passes_for(step: Step, tests: Collection[str]) -> bool:
    """Does ``step`` (a run of a tests check) pass as far as ``tests`` are concerned? Exit 0
    passes; with ``tests`` given, exit 1 whose output names failing tests (pytest's short summary,
    unittest's ``FAIL:`` lines) passes when none of ``tests`` (nor their file, by a collection
    error) is among them. Anything else does not pass: a timeout, pytest's 2 (interrupted), 4
    (usage error: a test or file that does not exist there), 5 (no tests), a failure heald
    cannot read."""
    if step.timed_out:
        return False
    if step.exit == 0:
        return True
    if not tests or step.exit != 1:
        return False
    failed, collect = failing_ids(step.output)
    if not failed and not collect:
        return False
    bad = set(failed) | set(collect)
    return not any(t in bad or t.split("::")[0] in bad for t in tests)


def _hung_test(output: str) -> str:
    """The test a killed run was in, when its output says (pytest ``-v``'s last ``path::test``
    without a result, or pytest-timeout's ``Timeout`` banner)."""
    last = ""
    for line in output.splitlines():
        m = re.match(r"^([\w/.\-]+\.py::\S+)", line.strip())
        if m:
            last = m.group(1)
    return last


def _tests_failing(ws: Workspace, inv: Investigation, wt: Worktree, files: Files, tests: Check, first: Step,
                   bad: str, good: str | None) -> None:
    cfg = ws.config.ci
    output = first.output
    inv.excerpt = excerpt_of(output)
    found = classify(output)
    inv.category = found[0].category if found else "test_failure"
    pytest_cmd = "pytest" in tests.command
    if first.timed_out:
        hung = _hung_test(output)
        inv.verdict, inv.category = "hang", "ci_timeout"
        inv.facts["hung"] = hung or "unknown"
        inv.summary = (f"the test run at {bad[:12]} was killed by the per-run timeout ({first.duration_s:.0f} s, "
                       f"ci.check_timeout_seconds){f'; it was in {hung}' if hung else ''}: a test hangs. heald does "
                       f"not re-run a hang; give the hanging test a timeout or quarantine it")
        return
    if pytest_cmd and first.exit in (4, 5):
        inv.verdict, inv.category = "unresolved", "test_collection_error"
        what = "collected no tests (exit 5)" if first.exit == 5 else "stopped with a usage error (exit 4)"
        inv.summary = (f"pytest {what} at {bad[:12]} with `{tests.command}` ({tests.source or 'detected'}): heald's "
                       f"test command does not run this project's tests; give the command with --test-cmd")
        return
    failed, collect = failing_ids(output)
    quarantine = ws.job.quarantine
    held = [t for t in [*failed, *collect] if is_quarantined(t, quarantine)]
    targets = [t for t in [*failed, *collect] if t not in held]
    inv.failing_tests = targets
    inv.facts["failing_tests"] = " ".join(targets[:20])
    if held:
        inv.facts["quarantined"] = " ".join(held[:20])
    timeouts = [t for t in failed if re.search(rf"(?:FAILED|ERROR) {re.escape(t)} - Failed: Timeout", output)]
    if timeouts:
        inv.facts["timed_out_tests"] = " ".join(timeouts[:20])
    if held and not targets:
        inv.verdict, inv.category = "known_failures", "test_failure"
        inv.summary = (f"only quarantined tests fail at {bad[:12]} ({', '.join(held[:5])}): nothing new is broken")
        return
    # a missing module counts when it is why a test failed or a module did not collect (not a
    # mention in a skip reason or a warning); with no ids to read, anywhere in the output
    reasons = failure_reasons(output)
    why = [reasons.get(t, "") for t in targets]
    if not any(why):  # no reason read for any failing test (unittest, or no ids): the whole output
        why = [output]
    missing = next((m for m in (_MISSING.search(w) for w in why) if m), None)
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
        # no distribution provides it: judged with the other failures (at the baseline too, it is
        # the environment's; a commit that introduced the import is a regression like any other)
        inv.facts["module_unprovided"] = module
        inv.category = found[0].category if found else "test_failure"
    _judge_and_find(ws, inv, wt, tests, targets, bad, good, cfg.flake_reruns)


def _judge_and_find(ws: Workspace, inv: Investigation, wt: Worktree, tests: Check, targets: list[str], bad: str,
                    good: str | None, reruns: int) -> None:
    """Per-test judgement (the tests failing at ``bad`` minus those failing at the baseline:
    ``good``, else the parent of ``bad``, else the first older commit where some of them pass),
    the flake check on the regression, then bisection (:func:`_find_culprit`)."""
    cache, runner = ws.cache, ws.runner
    targets, flaky = _rerun(ws, wt, tests, targets, bad, reruns)
    if flaky:
        inv.facts["flaky_tests"] = " ".join(flaky[:20])
    if flaky and not targets:
        inv.verdict, inv.category = "flaky", "flaky_test"
        inv.facts["reruns"] = str(reruns)
        what = _list(flaky) if flaky != ["*"] else f"`{tests.command}`"
        inv.summary = (f"{what} failed at {bad[:12]} and then passed a re-run at the same commit (of {reruns}): a "
                       f"flaky test; heald changes no code for it")
        return
    inv.failing_tests = targets
    base = good
    if base is None:
        try:
            base = cache.resolve(f"{bad}^")
        except GitError:
            base = None  # the first commit: nothing to compare with
    regression = list(targets)
    existing = list(targets)
    lowest_bad = bad
    if targets and base is not None:
        new = _tests_added_by(cache, base, [t for t in targets if "::" in t])
        existing = [t for t in targets if t not in new]
        if new:
            inv.facts["new_tests"] = " ".join(new[:20])
        if not existing:
            inv.verdict, inv.category = "never_passed", "test_never_passed"
            inv.facts["good_sha"] = base
            added = _commit_adding(cache, base, bad, new[0])
            by = ""
            if added:
                c = cache.commit(added)
                inv.facts.update({"culprit_sha": added, "culprit_short": added[:12], "culprit_author": c.author,
                                  "culprit_date": c.authored_at.isoformat(), "culprit_age": c.age(),
                                  "culprit_subject": c.subject})
                by = f" (added by {added[:12]} {c.subject!r}, {c.author})"
            inv.summary = (f"{', '.join(new[:5])} did not exist at {base[:12]}{by}: the failing tests were added after "
                           f"it and have never passed; reverting would delete them, so heald does not")
            return
        regression = _regressed_at(ws, inv, wt, tests, existing, base, "baseline")
        inv.facts["baseline_commit"] = base
        if regression:
            good = base
        elif good is not None:
            inv.verdict, inv.category = "red_everywhere", "environment_drift"
            inv.facts["good_sha"] = good
            inv.summary = (f"every test failing at {bad[:12]} ({_list(existing)}) also fails at the known-good commit "
                           f"{good[:12]}: baseline failures (environment, or tests that never passed), not a change "
                           f"between them; no revert")
            return
        else:
            lowest_bad = base
    elif not targets and good is not None:
        if not passes_for(runner.at(wt, good, tests.command, phase="baseline"), ()):
            inv.verdict, inv.category = "red_everywhere", "environment_drift"
            inv.facts["good_sha"] = good
            inv.summary = (f"`{tests.command}` also fails at the known-good commit {good[:12]} and names no failing "
                           f"test heald can judge one by one; no revert")
            return
    if good is None:
        found = _look_back(ws, inv, wt, tests, existing, bad, lowest_bad)
        if found is None:
            return
        good, lowest_bad, regression = found
    baseline = [t for t in existing if t not in regression] if regression else []
    if baseline:  # they fail where the regression passes: the environment's, not the change's
        inv.facts["baseline_failures"] = " ".join(baseline[:30])
    inv.failing_tests = regression or inv.failing_tests
    command, narrow = narrowed(tests, regression)
    inv.facts["check_command"] = command
    inv.facts["regression_tests"] = " ".join(regression[:20])
    _find_culprit(ws, inv, wt, tests, command, narrow, bad, good, lowest_bad, regression)


def _commit_adding(cache: RepoCache, base: str, bad: str, test_id: str) -> str | None:
    """The oldest commit in base..bad that added ``test_id``'s file or its ``def`` (None when
    git does not say)."""
    path, _, rest = test_id.partition("::")
    name = rest.split("::")[-1].split("[")[0]
    for args in ((f"-Sdef {name}",) if name else ()) + ("--diff-filter=A",):
        out = cache.git("log", "--format=%H", args, f"{base}..{bad}", "--", path, timeout=60, check=False).split()
        if out:
            return out[-1]
    return None


def _rerun(ws: Workspace, wt: Worktree, tests: Check, targets: list[str], bad: str,
           reruns: int) -> tuple[list[str], list[str]]:
    """Re-run the failing tests at ``bad`` up to ``reruns`` times (stopping at a hang or once
    nothing is left): (the tests that failed every time, the ones that passed once: flaky).
    With no test ids, the whole command: ``(targets, ["*"])`` when a re-run passed."""
    left = list(targets)
    flaky: list[str] = []
    for _ in range(reruns):
        command, _ = narrowed(tests, left)
        step = ws.runner.at(wt, bad, command, phase="rerun")
        if step.timed_out:
            break  # a hang is not re-run
        if not left:
            if passes_for(step, ()):
                return [], ["*"]
            continue
        passed = left if passes_for(step, ()) else _passing_among(step, left)
        flaky += passed
        left = [t for t in left if t not in passed]
        if not left:
            break
    return left, flaky


def _passing_among(step: Step, tests: list[str]) -> list[str]:
    """Of ``tests``, those a run that exited 1 with readable results did not name as failing."""
    if step.timed_out or step.exit != 1:
        return []
    failed, collect = failing_ids(step.output)
    if not failed and not collect:
        return []
    gone = set(failed) | set(collect)
    return [t for t in tests if t not in gone and t.split("::")[0] not in gone]


def _regressed_at(ws: Workspace, inv: Investigation, wt: Worktree, tests: Check, targets: list[str], sha: str,
                  phase: str) -> list[str]:
    """Of ``targets``, those that pass at ``sha`` (run narrowed to them when the command allows).
    A test pytest does not find there (exit 4, ``ERROR: not found``: it did not exist yet) does
    not pass; the run is repeated without it (at most 3 times) so that the others are judged."""
    left = list(targets)
    for _ in range(3):
        command, _ = narrowed(tests, left)
        step = ws.runner.at(wt, sha, command, phase=phase)
        if passes_for(step, ()):
            return left
        if step.exit != 4:
            return _passing_among(step, left)
        gone = set(_NOT_FOUND.findall(step.output))
        kept = [t for t in left if not any(g.endswith(t) for g in gone)]
        if not gone or len(kept) == len(left) or not kept:
            return []
        left = kept
    return []


def _look_back(ws: Workspace, inv: Investigation, wt: Worktree, tests: Check, targets: list[str], bad: str,
               lowest_bad: str) -> tuple[str, str, list[str]] | None:
    """Walk back the first-parent history (1, 2, 4, … commits, the oldest within
    ``ci.max_lookback_commits`` last) for a commit where some of ``targets`` pass: (that commit,
    the newest commit seen failing, the tests that pass there). None (verdict set) when none."""
    cfg = ws.config.ci
    chain = ws.cache.first_parent_chain(bad, cfg.max_lookback_commits)
    tried: list[str] = []
    start = chain.index(lowest_bad) * 2 if lowest_bad in chain and lowest_bad != bad else 1
    candidates: list[str] = []
    i = max(1, start)
    while i < len(chain):
        candidates.append(chain[i])
        i *= 2
    if len(chain) > 1 and chain[-1] not in candidates and chain[-1] != lowest_bad:
        candidates.append(chain[-1])
    if lowest_bad != bad:
        tried.append(lowest_bad)
    for sha in candidates:
        tried.append(sha)
        if targets:
            passing = _regressed_at(ws, inv, wt, tests, targets, sha, "search")
        else:
            passing = [] if not passes_for(ws.runner.at(wt, sha, tests.command, phase="search"), ()) else ["*"]
        if passing:
            return sha, lowest_bad, [t for t in passing if t != "*"]
        lowest_bad = sha
    inv.verdict, inv.category = "red_everywhere", "environment_drift"
    reach = "the first commit" if len(chain) <= cfg.max_lookback_commits else f"{len(chain) - 1} commits back"
    inv.facts["commits_tried"] = " ".join(s[:12] for s in tried)
    inv.summary = (f"{_list(targets) or f'`{tests.command}`'} fail{'s' if len(targets) == 1 else ''} at every commit "
                   f"tried, back to {reach} ({len(tried)} commits): nothing recent broke "
                   f"{'them' if len(targets) > 1 else 'it'} (environment drift, or tests that never passed); no revert")
    return None


def _list(tests: list[str], n: int = 3) -> str:
    return ", ".join(tests[:n]) + (f" and {len(tests) - n} more" if len(tests) > n else "")


def _find_culprit(ws: Workspace, inv: Investigation, wt: Worktree, tests: Check, command: str, narrow: bool,
                  bad: str, good: str, lowest_bad: str, regression: list[str]) -> None:
    cfg = ws.config.ci
    runner = ws.runner

    def passes(step: Step) -> bool:
        return passes_for(step, regression)

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
        outcome = runner.bisect(wt, good, lowest_bad, command, tests=() if narrow else regression)
        inv.bisect_runs = len(outcome.runs)
        inv.facts["bisect_log"] = " ".join(f"{s[:10]}:{'good' if ok else 'bad'}" for s, _, ok in outcome.judged)
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
    if regression and not passes(again) and not again.timed_out:
        # the log the diagnosis reads: the regression alone, not the baseline failures around it
        # (a network test failing everywhere would read as a DNS failure and outvote the finding)
        inv.excerpt = excerpt_of(again.output)
    inv.facts["flake_check"] = f"at the culprit: {again.describe()}; at its parent: {before.describe()}"
    if passes(again) or not passes(before):
        inv.verdict = "unresolved"
        inv.summary = (f"bisection named {culprit[:12]}, but re-running at it ({again.describe()}) and at its parent "
                       f"({before.describe()}) does not confirm it: the failure is not deterministic")
        return
    new_tests = _tests_added_by(ws.cache, parent, [t for t in regression if "::" in t])
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
