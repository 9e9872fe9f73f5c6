"""Verifying a CI fix: the remote's branch holds the commit heald validated, and the checks that
failed at the failing commit pass on it in the sandbox.

One sandboxed run is deterministic evidence, so the check runs once and keeps its answer (the
CI runbooks set ``verify.stabilization_seconds: 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from heald import _paths
from heald._git import GitError
from heald.ci import CiJob
from heald.ci.investigate import Workspace, failed_test_ids
from heald.ci.repo import Worktree
from heald.ci.runner import Step
from heald.config import HealdConfig
from heald.models import ActionStatus, CheckResult, Incident, utcnow
from heald.sandbox import SandboxUnavailable
from heald.store import Store

CI_REMEDIES = ("revert_commit", "add_dependency", "lint_autofix", "forward_fix")


def ci_checks(incident: Incident, config: HealdConfig, store: Store) -> list[Callable[[], CheckResult]]:
    """The verification check of the incident's latest successful CI remedy; [] when it has
    none (then the incident is verified like any other)."""
    done = [a for a in store.actions_for(incident.id) if a.remedy in CI_REMEDIES and a.status == ActionStatus.succeeded]
    if not done:
        return []
    undo = dict(done[-1].undo or {})
    memo: dict[str, CheckResult] = {}
    if undo.get("dry_run"):
        def validated_only() -> CheckResult:
            return CheckResult(name="fix validated in the sandbox (dry run)", ok=True, at=utcnow(),
                               detail=f"{str(undo.get('sha'))[:12]} passed validation; dry run: nothing was pushed")
        return [validated_only]

    def fix_branch_passes() -> CheckResult:
        if "r" not in memo:
            memo["r"] = verify_fix(config, undo)
        return memo["r"]

    return [fix_branch_passes]


def verify_fix(config: HealdConfig, undo: dict) -> CheckResult:  # type: ignore[type-arg]
    """See the module docstring. ``undo`` is what the remedy recorded (branch, sha, work tree,
    the checks that failed)."""
    name = "fix branch passes in the sandbox"
    job = CiJob.for_repo(config, undo["repo"], undo["repo_url"], undo["sha"], test_command=undo.get("test_command") or None)
    try:
        ws = Workspace(config, job)
        remote = ws.cache.remote_branch(undo["branch"])
        if remote != undo["sha"]:
            return CheckResult(name=name, ok=False, at=utcnow(),
                               detail=f"the remote's {undo['branch']} is at {remote or 'nothing'}, not {undo['sha'][:12]}")
        files = ws.files(undo["sha"])
        checks = [c for c in ws.checks(files) if c.name in set(undo.get("checks") or [])] or ws.checks(files)
        tree = Path(undo.get("worktree") or "/nonexistent")
        root = tree.parent
        if (undo.get("validated_sha") == undo["sha"] and root.name == tree.name
                and _paths.is_dir(root, "heald/venv")):  # never through a link
            wt = Worktree(ws.cache, tree, tree, undo["sha"], root)  # the validated tree, environment installed
        else:
            ws.cache.update(want=[undo["sha"]])
            wt = ws.cache.add_worktree(undo["sha"], "verify")
            if not ws.install(wt, files, checks, phase="verify-install").ok:
                return CheckResult(name=name, ok=False, at=utcnow(), detail="the dependencies do not install on the fix")
        results = {c.name: ws.runner.check(wt, c, phase="verify", commit=undo["sha"]) for c in checks}
    except (GitError, SandboxUnavailable) as exc:
        return CheckResult(name=name, ok=False, at=utcnow(), detail=str(exc)[:500])
    baseline = set(undo.get("baseline") or [])

    def passes(step: Step) -> bool:  # baseline failures (the environment's, quarantined) may remain
        ids = failed_test_ids(step.output) if step.exit == 1 and not step.timed_out else []
        return step.ok or (bool(ids) and set(ids) <= baseline)

    failing = [n for n, r in results.items() if not passes(r)]
    detail = "; ".join(f"{n}: {r.describe()}" for n, r in results.items())
    if baseline and not failing and any(not r.ok for r in results.values()):
        detail += f" (only baseline failures remain: {', '.join(sorted(baseline)[:5])})"
    return CheckResult(name=name, ok=not failing, at=utcnow(),
                       detail=f"{undo['branch']} at {undo['sha'][:12]}: {detail}")
