"""CI remedies: ``revert_commit``, ``add_dependency``, ``lint_autofix``.

Each makes its fix in a fresh work tree on top of the failing commit, validates it by running
every check in the sandbox (:func:`heald.ci.fix.build_fix`: the failing ones must pass, nothing
that passed may break), and only then pushes a branch and opens a draft pull request with the
evidence (:func:`heald.ci.pull_request.propose`). Its effect is that branch and pull request;
verification (:mod:`heald.ci.verify`) checks the pushed branch in the sandbox.

Guard: the proposal is keyed by the failure signature (repository, remedy, what broke). After a
crash mid-apply, a proposal recorded for this incident means the remedy already happened; a
signature proposed before (by another incident) is returned instead of a second pull request.
Undo: close the pull request and delete the branch.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator

from heald.ci import CiJob, InvalidJob, check_url
from heald.ci.fix import FixResult, build_fix
from heald.ci.pull_request import (
    Proposal,
    failure_signature,
    find,
    github_repo,
    propose,
    render_body,
    token,
    withdraw,
)
from heald.ci.repo import RepoCache
from heald.remedies.base import (
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyNotApplicable,
    RemedyParams,
    RemedyResult,
    Target,
    register,
)

SHA = r"^[0-9a-fA-F]{7,64}$"


class CiParams(RemedyParams):
    repo: str = Field(min_length=1, max_length=300, description="owner/name, or a name for a local repository")
    url: str = Field(min_length=1, max_length=2000, description="clone and push URL or path")
    base: str = Field(pattern=SHA, description="the failing commit the fix goes on top of")
    branch: str = Field(default="", max_length=300, description="the branch that failed (the pull request's base)")
    test_command: str = Field(default="", max_length=2000, description="test command; empty: detected")

    @field_validator("url")
    @classmethod
    def _clone_url(cls, v: str) -> str:
        try:
            return check_url(v, "url")
        except InvalidJob as exc:
            raise ValueError(str(exc)) from None


class RevertParams(CiParams):
    commit: str = Field(pattern=SHA, description="the culprit commit to revert")


class AddDependencyParams(CiParams):
    module: str = Field(pattern=r"^[A-Za-z_][\w.]*$", description="the module the tests could not import")
    distribution: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the distribution that provides it")
    version: str = Field(pattern=r"^[0-9][0-9A-Za-z.+!-]*$", description="a version of it that installs")
    scope: Literal["runtime", "test"] = Field(default="runtime", description="test: only the tests import it")


CP = TypeVar("CP", bound="CiParams")


class LintParams(CiParams):
    tools: str = Field(pattern=r"^[a-z0-9 ,]+$", description="comma-separated lint checks to autofix (ruff, black, …)")


class _CiRemedy(Remedy[CP]):
    """The shared apply/undo of the CI remedies over their parameter model ``CP``; a subclass
    says what identifies its fix (:meth:`key`), the fix's parameters and the pull request's
    title."""

    kind: ClassVar[str]
    has_undo = True

    def target(self, params: CP) -> Target:
        return Target("repo", params.repo)

    def touches_heald(self, params: CP, heald: HealdSelf) -> str | None:
        """Never: a CI remedy works in a fresh clone under ``ci.work_dir`` and acts on a
        remote repository (a branch and a pull request), not on heald."""
        return None

    @abstractmethod
    def key(self, params: CP) -> str:
        """What identifies this fix within the repository (part of the failure signature)."""

    @abstractmethod
    def fix_params(self, params: CP) -> dict[str, str]:
        """The parameters :func:`heald.ci.fix.build_fix` takes for this kind of fix."""

    @abstractmethod
    def title(self, params: CP, fix: FixResult) -> str:
        """The pull request's title."""

    def signature(self, params: CP) -> str:
        return failure_signature(params.repo, self.kind, self.key(params))

    def _job(self, params: CP, ctx: RemedyContext) -> CiJob:
        return CiJob.for_repo(ctx.config, params.repo, params.url, params.base, branch=params.branch,
                              test_command=params.test_command or None)

    def snapshot(self, params: CP, ctx: RemedyContext) -> dict[str, Any] | None:
        found = find(ctx.store, params.repo, self.signature(params)) if ctx.store else None
        return {"signature": self.signature(params), "proposed_before": found.as_dict() if found else None}

    def already_applied(self, params: CP, ctx: RemedyContext,
                        snapshot: dict[str, Any] | None) -> bool:
        if ctx.store is None or (snapshot or {}).get("proposed_before"):
            return False
        return find(ctx.store, params.repo, self.signature(params)) is not None

    def apply(self, params: CP, ctx: RemedyContext) -> RemedyResult:
        from heald.ci.incident import investigation_data, reproduction

        if ctx.store is None:
            raise RemedyError(f"{self.name} needs heald's store (it records the pull request)")
        job = self._job(params, ctx)
        incident_id = ctx.incident.id if ctx.incident else None
        signals = ctx.store.signals_for(incident_id) if incident_id else []
        inv = investigation_data(reproduction(signals))
        diagnoses = ctx.store.diagnoses_for(incident_id) if incident_id else []
        diagnosis = diagnoses[-1].model_dump(mode="json") if diagnoses else None
        trailer = f"\n\nHealed-by: heald incident #{incident_id}" if incident_id else ""
        facts = inv.get("facts") or {}
        baseline = [*facts.get("baseline_failures", "").split(), *facts.get("quarantined", "").split()]
        fix = build_fix(ctx.config, job, self.kind, self.fix_params(params), before=inv.get("before") or None,
                        token=token(ctx.config), trailer=trailer, baseline=baseline)
        if not fix.ok:
            if fix.deterministic:  # said once; a retry would fail the same way (the engine does not retry it)
                raise RemedyNotApplicable(f"the fix cannot be made here: {fix.reason}")
            raise RemedyError(f"the fix was not proposed: {fix.reason}")
        if ctx.config.ci.dry_run:  # everything but the push and the pull request
            return RemedyResult(f"dry run: {self.kind} {fix.sha[:12]} on {params.repo} validated in the sandbox "
                                f"({fix.reason}); not pushed, no pull request",
                                undo={"dry_run": True, "sha": fix.sha, "validated_sha": fix.sha, "worktree": fix.worktree,
                                      "repo": params.repo, "repo_url": job.url, "branch": None, "existing": True,
                                      "changed": fix.changed, "message": fix.message})
        run_url = next((s.annotations.get("html_url", "") for s in signals if s.kind == "ci_failed"), "")
        body = render_body(investigation=inv, diagnosis=diagnosis, fix=fix, incident_id=incident_id, run_url=run_url)
        cache = RepoCache(ctx.config.ci_work_dir, job.repo, job.url, timeout=ctx.config.ci.git_timeout_seconds)
        gh = github_repo(params.repo, job.url, ctx.config.ci.github.host)
        try:
            proposal = propose(ctx.config, ctx.store, cache, fix=fix, kind=self.kind, signature=self.signature(params),
                               title=self.title(params, fix), body=body, base_branch=params.branch, gh_repo=gh,
                               incident_id=incident_id)
        except Exception as exc:  # rate limit, GitHub's refusal, a push that fails: the attempt fails with the reason
            raise RemedyError(f"the fix is valid ({fix.reason}) but was not proposed: {exc}") from exc
        where = f"pull request #{proposal.number} {proposal.url}" if proposal.number else proposal.note
        prefix = "already proposed before: " if proposal.existing else ""
        output = (f"{prefix}{self.kind} {fix.sha[:12]} on {params.repo}: {fix.reason}; branch {proposal.branch}; {where}")
        return RemedyResult(output, undo={**proposal.as_dict(), "worktree": fix.worktree, "validated_sha": fix.sha,
                                          "repo_url": job.url, "gh_repo": gh,
                                          "checks": [n for n, b in fix.before.items()  # what the fix repaired
                                                     if not b["ok"] and _repaired(fix.after.get(n, {}), baseline)],
                                          "test_command": params.test_command, "baseline": baseline})

    def undo(self, params: CP, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        if ctx.store is None or undo.get("existing"):
            return RemedyResult("nothing to undo: the proposal predates this incident")
        cache = RepoCache(ctx.config.ci_work_dir, params.repo, undo.get("repo_url") or params.url,
                          timeout=ctx.config.ci.git_timeout_seconds)
        proposal = Proposal(**{k: undo[k] for k in Proposal.__dataclass_fields__ if k in undo})
        done = withdraw(ctx.config, ctx.store, cache, proposal, undo.get("gh_repo"),
                        ctx.incident.id if ctx.incident else None, "verification of the fix failed")
        return RemedyResult(done)


def _repaired(after: dict[str, Any], baseline: list[str]) -> bool:
    """Does a check pass after the fix, or fail only by baseline (environment, quarantined) tests?"""
    failed = after.get("failed_tests") or []
    return bool(after.get("ok")) or (bool(failed) and set(failed) <= set(baseline))


@register
class RevertCommit(_CiRemedy[RevertParams]):
    """Revert the commit that broke the tests (found by bisection), validated in the sandbox,
    as a draft pull request."""

    name = "revert_commit"
    description = "Revert the culprit commit of a CI failure and propose it as a pull request"
    Params = RevertParams
    kind = "revert"

    def key(self, params: RevertParams) -> str:
        return params.commit.lower()

    def fix_params(self, params: RevertParams) -> dict[str, str]:
        return {"commit": params.commit}

    def title(self, params: RevertParams, fix: FixResult) -> str:
        return fix.message.splitlines()[0][:200]


@register
class AddDependency(_CiRemedy[AddDependencyParams]):
    """Declare a distribution the tests import but the project does not declare, with a version
    that installs, validated in the sandbox, as a draft pull request."""

    name = "add_dependency"
    description = "Add a missing distribution to the project's dependencies and propose it as a pull request"
    Params = AddDependencyParams
    kind = "add_dependency"

    def key(self, params: AddDependencyParams) -> str:
        return params.module

    def fix_params(self, params: AddDependencyParams) -> dict[str, str]:
        return {"module": params.module, "distribution": params.distribution, "version": params.version,
                "scope": params.scope}

    def title(self, params: AddDependencyParams, fix: FixResult) -> str:
        return f"Declare the missing dependency {params.distribution}>={params.version}"


@register
class LintAutofix(_CiRemedy[LintParams]):
    """Run the project's own lint/format autofixers (ruff, black, isort) on the failing commit,
    validated in the sandbox, as a draft pull request."""

    name = "lint_autofix"
    description = "Run the project's lint/format autofixers and propose the result as a pull request"
    Params = LintParams
    kind = "lint"

    def key(self, params: LintParams) -> str:
        return f"{params.base.lower()}:{params.tools}"

    def fix_params(self, params: LintParams) -> dict[str, str]:
        return {"tools": params.tools}

    def title(self, params: LintParams, fix: FixResult) -> str:
        return f"Fix lint ({params.tools.replace(',', ', ')})"
