"""Proposing a validated fix: push the branch, open a draft pull request with the evidence.

:func:`propose` pushes the fix commit to ``<ci.branch_prefix><kind>-<signature>`` on the
repository's remote and, when the repository is on GitHub (``owner/name``) and a token is
set, opens a draft pull request through GitHub's REST API with githubkit (``ci.github.api_url``
for GitHub Enterprise). One pull request per failure signature: a failure heald has already
proposed a fix for gets the existing one back. At most ``ci.pull_requests.max_per_repo`` per
repository per ``window_seconds``. Every proposal is recorded in the ``ci_pull_requests`` table
with an audit entry in the same transaction.

REST endpoints used (docs.github.com/rest/pulls/pulls): ``POST /repos/{owner}/{repo}/pulls``
(title, head, base, body, draft, maintainer_can_modify), ``GET /repos/{owner}/{repo}/pulls``
(head, state) and ``PATCH /repos/{owner}/{repo}/pulls/{number}`` (state).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from heald.ci.fix import FixResult
from heald.ci.repo import RepoCache
from heald.config import HealdConfig
from heald.models import utcnow
from heald.store import Store, audit
from heald.store.db import lock
from heald.store.tables import CiPullRequestRow


class RateLimited(RuntimeError):
    """The repository already got its pull requests for this window."""


class PullRequestError(RuntimeError):
    """GitHub refused the pull request; the message has its status and words."""


@dataclass(frozen=True)
class Proposal:
    """A pushed fix branch and its pull request (``number``/``url`` None when no pull request
    was opened, with ``note`` saying why); ``existing`` when it was proposed before."""

    repo: str
    signature: str
    branch: str
    base_branch: str
    sha: str
    number: int | None
    url: str | None
    state: str
    existing: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def failure_signature(repo: str, kind: str, key: str) -> str:
    """A stable id of one failure (what broke and how heald fixes it): 16 hex digits."""
    return hashlib.sha256(f"{repo}\x00{kind}\x00{key}".encode()).hexdigest()[:16]


def github_repo(repo: str, url: str, host: str = "github.com") -> str | None:
    """``owner/name`` on GitHub for a job: ``repo`` when it has that form (a webhook's
    ``repository.full_name``, ``heal-ci --github-repo``; the URL may be a mirror), else parsed
    from an ``https://<host>/owner/name(.git)`` or ``git@<host>:`` URL; None otherwise."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        return repo
    m = re.match(rf"^(?:https://{re.escape(host)}/|git@{re.escape(host)}:)([\w.-]+/[\w.-]+?)(?:\.git)?/?$", url)
    return m.group(1) if m else None


def token(config: HealdConfig) -> str | None:
    """The GitHub token, from the environment variable ``ci.github.token_env``."""
    return os.environ.get(config.ci.github.token_env) or None


def _row(r: CiPullRequestRow, existing: bool = False, note: str = "") -> Proposal:
    return Proposal(r.repo, r.signature, r.branch, r.base_branch, r.sha, r.number, r.url, r.state, existing, note)


def find(store: Store, repo: str, signature: str) -> Proposal | None:
    with store.tx() as s:
        r = s.scalar(sa.select(CiPullRequestRow).where(CiPullRequestRow.repo == repo,
                                                       CiPullRequestRow.signature == signature))
        return _row(r, existing=True) if r is not None else None


def _client(config: HealdConfig, tok: str) -> Any:
    from githubkit import GitHub

    return GitHub(tok, base_url=config.ci.github.api_url.rstrip("/") + "/", auto_retry=False, http_cache=False,
                  timeout=30)


def _open_pr(config: HealdConfig, gh_repo: str, tok: str, *, title: str, head: str, base: str, body: str
             ) -> tuple[int, str]:
    from githubkit.exception import RequestFailed

    owner, name = gh_repo.split("/", 1)
    gh = _client(config, tok)
    data = {"title": title, "head": head, "base": base, "body": body, "draft": config.ci.pull_requests.draft,
            "maintainer_can_modify": True}
    # The answer is read as plain JSON for the two fields heald needs, so that GitHub adding
    # fields to its pull request object never breaks heald.
    try:
        pr = gh.rest.pulls.create(owner, name, data=data).json()
        return int(pr["number"]), str(pr["html_url"])
    except RequestFailed as exc:
        text = exc.response.text[:500]
        if exc.response.status_code == 422 and "already exists" in text:
            found = gh.rest.pulls.list(owner, name, head=f"{owner}:{head}", state="open").json()
            if found:
                return int(found[0]["number"]), str(found[0]["html_url"])
        raise PullRequestError(f"GitHub refused the pull request ({exc.response.status_code}): {text}") from exc


def propose(config: HealdConfig, store: Store, cache: RepoCache, *, fix: FixResult, kind: str, signature: str,
            title: str, body: str, base_branch: str, gh_repo: str | None, incident_id: int | None,
            actor: str = "heald") -> Proposal:
    """Push ``fix`` and open its draft pull request (see the module docstring). Returns the
    existing proposal for a signature already proposed (nothing pushed). Raises RateLimited,
    PullRequestError, GitError."""
    repo = cache.repo
    existing = find(store, repo, signature)
    if existing is not None and existing.state == "open":
        return existing
    pr_cfg = config.ci.pull_requests
    since = utcnow() - timedelta(seconds=pr_cfg.window_seconds)
    with store.tx() as s:
        recent = s.scalar(sa.select(sa.func.count()).select_from(CiPullRequestRow).where(
            CiPullRequestRow.repo == repo, CiPullRequestRow.created_at >= since)) or 0
    if recent >= pr_cfg.max_per_repo:
        raise RateLimited(f"rate limit: {recent} fix branches for {repo} in the last {pr_cfg.window_seconds:g} s "
                          f"(ci.pull_requests.max_per_repo is {pr_cfg.max_per_repo}); not proposing another")
    branch = f"{config.ci.branch_prefix}{kind.replace('_', '-')}-{signature}"
    cache.push(fix.sha, branch)
    number = url = None
    note = ""
    tok = token(config)
    if gh_repo is None:
        note = "no pull request: the repository is not on GitHub (the branch is pushed)"
    elif tok is None:
        note = f"no pull request: ${config.ci.github.token_env} is not set (the branch is pushed)"
    elif not base_branch:
        note = "no pull request: the failing branch is unknown (the branch is pushed)"
    else:
        number, url = _open_pr(config, gh_repo, tok, title=title, head=branch, base=base_branch, body=body)
    with store.tx() as s:
        lock(s, f"heald.ci.pr.{repo}.{signature}")
        row = s.scalar(sa.select(CiPullRequestRow).where(CiPullRequestRow.repo == repo,
                                                         CiPullRequestRow.signature == signature))
        if row is None:
            row = CiPullRequestRow(repo=repo, signature=signature, branch=branch, base_branch=base_branch, sha=fix.sha,
                                   number=number, url=url, state="open", incident_id=incident_id, created_at=utcnow())
            s.add(row)
        else:
            row.sha, row.number, row.url, row.state, row.incident_id = fix.sha, number, url, "open", incident_id
            row.created_at = utcnow()
        s.flush()
        audit.append(s, actor=actor, event="ci.fix_proposed", incident_id=incident_id,
                     reason=f"pushed {branch} ({fix.sha[:12]}) to {repo}" + (f"; pull request #{number}: {url}" if number else f"; {note}"),
                     details={"repo": repo, "signature": signature, "branch": branch, "sha": fix.sha, "number": number,
                              "url": url, "kind": kind})
        return _row(row, note=note)


def withdraw(config: HealdConfig, store: Store, cache: RepoCache, proposal: Proposal, gh_repo: str | None,
             incident_id: int | None, reason: str) -> str:
    """Undo a proposal: close its pull request, delete its branch, mark it closed. Returns what
    was done."""
    done = []
    tok = token(config)
    if proposal.number and gh_repo and tok:
        owner, name = gh_repo.split("/", 1)
        gh = _client(config, tok)
        gh.rest.pulls.update(owner, name, proposal.number, data={"state": "closed"}).json()
        done.append(f"closed pull request #{proposal.number}")
    cache.delete_remote_branch(proposal.branch)
    done.append(f"deleted branch {proposal.branch}")
    with store.tx() as s:
        row = s.scalar(sa.select(CiPullRequestRow).where(CiPullRequestRow.repo == proposal.repo,
                                                         CiPullRequestRow.signature == proposal.signature))
        if row is not None:
            row.state = "closed"
        audit.append(s, actor="heald", event="ci.fix_withdrawn", incident_id=incident_id,
                     reason=f"{'; '.join(done)}: {reason}", details={"repo": proposal.repo, "branch": proposal.branch})
    return "; ".join(done)


def _fence(text: str, limit: int = 4000) -> str:
    text = text[-limit:].replace("```", "ʼʼʼ")
    return f"```\n{text}\n```"


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "…" if len(text) > limit else text).replace("|", "\\|")


def render_body(*, investigation: dict[str, Any], diagnosis: dict[str, Any] | None, fix: FixResult,
                incident_id: int | None, run_url: str = "") -> str:
    """The pull request's Markdown body: the failure excerpt, the diagnosis, the culprit (for a
    revert: sha, author, age, evidence), the change, each check before and after, and every
    command heald ran in the sandbox with its result."""
    facts = investigation.get("facts", {})
    lines = ["heald reproduced this CI failure in a sandbox (no network, read-only system, resource limits) and "
             "proposes this fix. Every check below ran there; the fix is proposed only because they pass.", ""]
    lines += ["## The failure", "", investigation.get("summary", "")]
    if run_url:
        lines += ["", f"CI run: {run_url}"]
    if investigation.get("excerpt"):
        lines += ["", _fence(investigation["excerpt"])]
    lines += ["", "## Diagnosis", ""]
    if diagnosis:
        lines.append(f"**{diagnosis.get('category')}** (confidence {float(diagnosis.get('confidence', 0)):.2f}, "
                     f"by {diagnosis.get('reasoner')}): {diagnosis.get('explanation', '')}")
    else:
        lines.append(f"**{investigation.get('category')}**: {investigation.get('summary', '')}")
    if fix.kind == "revert" and facts.get("culprit_sha"):
        lines += ["", "## The culprit", "",
                  f"- commit: `{facts['culprit_sha']}` — {facts.get('culprit_subject', '')}",
                  f"- author: {facts.get('culprit_author', '?')}",
                  f"- age: {facts.get('culprit_age', '?')} (authored {facts.get('culprit_date', '?')})",
                  f"- evidence: bisection between `{facts.get('good_sha', '?')[:12]}` (passes) and "
                  f"`{investigation.get('bad', '')[:12]}` (fails), {facts.get('commits_in_range', '?')} commits, "
                  f"{investigation.get('bisect_runs', 0)} bisection runs: {facts.get('bisect_log', '')}",
                  f"- re-run {facts.get('flake_check', '')}"]
    lines += ["", "## The fix", "", f"`{fix.sha[:12]}` on top of `{fix.base[:12]}`: "
              + ", ".join(f"`{p}`" for p in fix.changed), "", _fence(fix.message, 1500),
              "", f"Validation: {fix.reason}.", "",
              "## Checks in the sandbox", "", "| check | command | before (failing commit) | after (this fix) |",
              "|---|---|---|---|"]
    for name, b in fix.before.items():
        a = fix.after.get(name, {})

        def res(r: dict[str, Any]) -> str:
            if not r:
                return "not run"
            failed = f", failed: {', '.join(r['failed_tests'][:3])}" if r.get("failed_tests") else ""
            return f"{'pass' if r.get('ok') else 'FAIL'} (exit {r.get('exit')}{failed})"

        lines.append(f"| {name} | `{_cell(b.get('command', ''), 60)}` | {_cell(res(b))} | {_cell(res(a))} |")
    lines += ["", "## Commands run in the sandbox", "", "| phase | commit | command | result |", "|---|---|---|---|"]
    steps = [*investigation.get("steps", []), *[s.as_dict(0) for s in fix.steps]]
    for st in steps[:60]:
        result = "timed out" if st.get("timed_out") else f"exit {st.get('exit')} in {st.get('duration_s', 0):.1f} s"
        net = " (network)" if st.get("network") else " (package index only)" if st.get("package_index") else ""
        lines.append(f"| {st.get('phase')} | `{str(st.get('commit', ''))[:10]}` | `{_cell(st.get('command', ''), 90)}` | "
                     f"{result}{net} |")
    lines += ["", "---", "Proposed by heald" + (f" for incident #{incident_id}" if incident_id else "")
              + ". heald never edits tests or CI configuration; review before merging."]
    return "\n".join(lines)[:60000]
