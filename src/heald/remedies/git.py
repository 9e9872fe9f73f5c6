"""``git_revert``: revert a commit in a service's configuration repository, then make the
service reload its configuration."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import Field

from heald._git import GitError, run, succeeds
from heald.config import ConfigRepoConfig
from heald.correlate.changes import HEALD_GIT_EMAIL, HEALD_GIT_NAME
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


class GitRevertParams(RemedyParams):
    service: str = Field(min_length=1, description="a service with config_repo")
    commit: str = Field(pattern=r"^[0-9a-f]{7,40}$", description="the commit to revert (hex, 7 to 40 digits)")


def _repo(params: GitRevertParams, ctx: RemedyContext) -> ConfigRepoConfig:
    svc = ctx.config.services.get(params.service)
    if svc is None or svc.config_repo is None:
        raise RemedyNotApplicable(f"service {params.service!r} has no config_repo in the configuration")
    return svc.config_repo


#: heald's identity on the commits it makes (a revert, the revert of a revert).
_AS_HEALD = {"GIT_AUTHOR_NAME": HEALD_GIT_NAME, "GIT_AUTHOR_EMAIL": HEALD_GIT_EMAIL,
             "GIT_COMMITTER_NAME": HEALD_GIT_NAME, "GIT_COMMITTER_EMAIL": HEALD_GIT_EMAIL}


def _git(repo: ConfigRepoConfig, *args: str, as_heald: bool = False, timeout: float = 30.0) -> str:
    """git in the configuration repository (hardened, :func:`heald._git.run`), as heald when
    it commits. Raises RemedyError with git's words."""
    try:
        return run(*args, cwd=repo.path, env=_AS_HEALD if as_heald else None, timeout=timeout).strip()
    except GitError as exc:
        raise RemedyError(str(exc)) from exc


def reverting_commit(repo: ConfigRepoConfig, sha: str, since: str | None = None) -> str | None:
    """The commit on HEAD (after ``since``, if given) whose message says it reverts ``sha``."""
    rng = f"{since}..HEAD" if since else "HEAD"
    out = _git(repo, "log", "--format=%H", "-F", f"--grep=This reverts commit {sha}.", "--end-of-options", rng, "--")
    return out.splitlines()[0] if out else None


def reload(repo: ConfigRepoConfig) -> str:
    """POST ``reload_url`` so the service reads its configuration again ('' when none is set).
    Raises RemedyError when the service does not accept it."""
    if not repo.reload_url:
        return ""
    try:
        resp = httpx.post(repo.reload_url, timeout=repo.reload_timeout_seconds, headers={"user-agent": "heald-remedy"})
    except httpx.HTTPError as exc:
        raise RemedyError(f"reload {repo.reload_url} failed: {exc.__class__.__name__}: {exc}") from exc
    if resp.status_code >= 300:
        raise RemedyError(f"reload {repo.reload_url} answered {resp.status_code}: {resp.text[:300]}")
    return f"; reloaded ({resp.status_code})"


@register
class GitRevert(Remedy[GitRevertParams]):
    """``git revert`` the commit (as author ``heald``), then POST the repository's
    ``reload_url``. Refuses a work tree with uncommitted changes (they would be lost or
    committed) and a commit that is not on HEAD; a conflicting revert is aborted.

    Guard: a commit already reverted on HEAD is not reverted again (after a crash mid-apply
    the revert is found and only the reload is repeated, which is safe). Undo: revert the
    revert, and reload.
    """

    name = "git_revert"
    description = "Revert a commit in a service's configuration repository and reload the service"
    Params = GitRevertParams
    has_undo = True

    def target(self, params: GitRevertParams) -> Target:
        return Target("config", params.service)

    def cannot_apply(self, params: GitRevertParams, heald: HealdSelf) -> str | None:
        """A service with no ``config_repo`` in the configuration."""
        svc = heald.config.services.get(params.service)
        if svc is None or svc.config_repo is None:
            return f"git_revert cannot act on {params.service!r}: services.{params.service}.config_repo is not configured"
        return None

    def touches_heald(self, params: GitRevertParams, heald: HealdSelf) -> str | None:
        """A configuration repository inside heald's own state."""
        svc = heald.config.services.get(params.service)
        where = svc.config_repo.path if svc is not None and svc.config_repo is not None else None
        return heald.refuse_owned(self.target(params), where)

    def snapshot(self, params: GitRevertParams, ctx: RemedyContext) -> dict[str, Any] | None:
        return {"head": _git(_repo(params, ctx), "rev-parse", "HEAD")}

    def already_applied(self, params: GitRevertParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        repo = _repo(params, ctx)
        full = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{params.commit}^{{commit}}")
        if reverting_commit(repo, full, (snapshot or {}).get("head")) is None:
            return False
        reload(repo)
        return True

    def apply(self, params: GitRevertParams, ctx: RemedyContext) -> RemedyResult:
        repo = _repo(params, ctx)
        full = _git(repo, "rev-parse", "--verify", "--end-of-options", f"{params.commit}^{{commit}}")
        if _git(repo, "status", "--porcelain", "--untracked-files=no"):
            raise RemedyError(f"{repo.path} has uncommitted changes; heald does not revert over them")
        if not succeeds("merge-base", "--is-ancestor", "--end-of-options", full, "HEAD", cwd=repo.path):
            raise RemedyError(f"commit {full[:12]} is not on HEAD of {repo.path}")
        if (done := reverting_commit(repo, full)) is not None:
            return RemedyResult(f"commit {full[:12]} was already reverted by {done[:12]}{reload(repo)}",
                                {"revert": done})
        subject = _git(repo, "log", "-1", "--format=%s", "--end-of-options", full, "--")
        try:
            _git(repo, "revert", "--no-edit", "--end-of-options", full, as_heald=True)
        except RemedyError:
            succeeds("revert", "--abort", cwd=repo.path)
            raise
        new = _git(repo, "rev-parse", "HEAD")
        return RemedyResult(f"reverted {full[:12]} ({subject}) with {new[:12]}{reload(repo)}", {"revert": new})

    def undo(self, params: GitRevertParams, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        repo = _repo(params, ctx)
        revert = undo.get("revert")
        if not revert:
            raise RemedyError("no revert commit recorded to undo")
        if reverting_commit(repo, revert) is not None:
            return RemedyResult(f"the revert {revert[:12]} was already undone{reload(repo)}")
        _git(repo, "revert", "--no-edit", "--end-of-options", revert, as_heald=True)
        return RemedyResult(f"undid the revert {revert[:12]} with {_git(repo, 'rev-parse', 'HEAD')[:12]}{reload(repo)}")
