"""The ``forward_fix`` remedy: a model-written patch for a failing test that never passed, made
and validated by :func:`heald.ci.repair.forward_fix`, proposed as a draft pull request marked
as model-written (:func:`heald.ci.repair.propose_forward_fix`).

The runbook ``ci-forward-fix`` offers it at risk ``high`` only when an LLM endpoint is configured
(the reproduction's ``forward_fix: ready``), so the gate always asks a human first; a heald with
no endpoint escalates with the localization instead. Guard and undo are the CI remedies' (one
proposal per failure signature; undo closes the pull request and deletes the branch).
"""

from __future__ import annotations

from pydantic import Field

from heald.ci.fix import FixResult
from heald.ci.pull_request import github_repo, token
from heald.ci.remedies import CiParams, _CiRemedy
from heald.remedies.base import RemedyContext, RemedyError, RemedyResult, register


class ForwardFixParams(CiParams):
    tests: str = Field(min_length=1, max_length=20_000,
                       description="the failing tests (pytest node ids, space-separated) the fix must make pass")


@register
class ForwardFixRemedy(_CiRemedy[ForwardFixParams]):
    """Ask the configured model for a minimal patch, validate it in the sandbox and propose it
    as a draft, model-written pull request (see the module docstring)."""

    name = "forward_fix"
    description = "Propose a model-written code fix for failing tests that never passed (validated in the sandbox)"
    Params = ForwardFixParams
    kind = "forward_fix"

    def key(self, params: ForwardFixParams) -> str:
        return " ".join(sorted(params.tests.split()))

    def fix_params(self, params: ForwardFixParams) -> dict[str, str]:
        return {"tests": params.tests}

    def title(self, params: ForwardFixParams, fix: FixResult) -> str:
        return fix.message.splitlines()[0][:200]

    def apply(self, params: ForwardFixParams, ctx: RemedyContext) -> RemedyResult:
        from heald.ci.localize import endpoint
        from heald.ci.repair import forward_fix, propose_forward_fix

        if ctx.store is None:
            raise RemedyError("forward_fix needs heald's store (it records the pull request)")
        if endpoint(ctx.config) is None:
            raise RemedyError("no LLM endpoint is configured (llm.base_url, llm.model): nothing to ask for a fix")
        job = self._job(params, ctx)
        incident_id = ctx.incident.id if ctx.incident else None
        ff = forward_fix(ctx.config, job, token=token(ctx.config))
        if incident_id is not None:  # accounted per incident like the diagnosis LLM's calls
            for r in ff.rounds:
                if r.usage:
                    outcome = {"endpoint_failed": "error", "refused": "invalid"}.get(r.outcome, "ok")
                    ctx.store.add_llm_usage(incident_id, {**r.usage, "reasoner": "forward_fix", "outcome": outcome})
        if ff.best is None:
            raise RemedyError(f"no forward fix proposed ({ff.outcome}): {ff.reason[:1500]}; suspects: "
                              f"{ff.localization.summary(3)}")
        try:
            proposal = propose_forward_fix(ctx.config, ctx.store, ff, branch=params.branch, incident_id=incident_id,
                                           signature=self.signature(params))
        except Exception as exc:  # rate limit, GitHub's refusal, a failed push: the attempt fails with the reason
            raise RemedyError(f"the forward fix is valid but was not proposed: {exc}") from exc
        where = f"pull request #{proposal.number} {proposal.url}" if proposal.number else proposal.note
        return RemedyResult(
            f"model-written fix {ff.best.sha[:12]} on {params.repo} (round {ff.best.number}, {ff.tokens} tokens, "
            f"${ff.usage['cost_usd']:.4f}); branch {proposal.branch}; {where}",
            undo={**proposal.as_dict(), "worktree": ff.best.worktree, "validated_sha": ff.best.sha, "repo_url": job.url,
                  "gh_repo": github_repo(params.repo, job.url, ctx.config.ci.github.host), "checks": ["tests"],
                  "test_command": params.test_command, "usage": ff.usage})
