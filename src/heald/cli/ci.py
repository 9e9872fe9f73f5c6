"""``heald heal-ci``: heal a CI failure without GitHub — the same incident, engine, gate, audit
and learning as a webhook's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from heald.cli._common import JsonOpt, app, config, err, fail, out, print_json
from heald.models import IncidentState


def _default_branch(url: str) -> str:
    from heald._git import GitError
    from heald._git import run as git

    try:
        text = git("ls-remote", "--symref", url, "HEAD", timeout=60)
    except GitError:
        return ""
    for line in text.splitlines():
        if line.startswith("ref: refs/heads/"):
            return line.split()[1].removeprefix("refs/heads/")
    return ""


#: the reproduction's phases that run the project's checks (what the overhead ratio divides by)
TEST_PHASES = ("reproduce", "baseline", "search", "rerun", "bisect", "culprit", "parent")


def result_of(store: Any, incident_id: int, started: float) -> dict[str, Any]:
    """What a CI healing came to, as JSON-ready data (see ``heald heal-ci --help``)."""
    from heald.ci.incident import investigation_data, reproduction

    detail = store.incident_detail(incident_id)
    inc = detail["incident"]
    signals = store.signals_for(incident_id)
    rep = reproduction(signals)
    inv = investigation_data(rep)
    facts = inv.get("facts", {})
    diag = detail["diagnoses"][-1] if detail["diagnoses"] else {}
    actions = [a for a in detail["actions"] if a["status"] == "succeeded"]
    last = actions[-1] if actions else None
    undo = (last or {}).get("undo") or {}
    outcome = {"resolved": "fix_proposed", "escalated": "escalated",
               "needs_attention": "escalated"}.get(inc["state"], inc["state"])  # handed over: still failing
    if outcome == "fix_proposed" and undo.get("dry_run"):
        outcome = "fix_validated_dry_run"
    return {
        "incident_id": incident_id, "state": inc["state"], "outcome": outcome, "reason": inc["closed_reason"],
        "verdict": rep.labels.get("verdict") if rep else None, "summary": inv.get("summary"),
        "category": diag.get("category"), "confidence": diag.get("confidence"),
        "remedy": last["remedy"] if last else None, "fix_sha": undo.get("sha"), "branch": undo.get("branch"),
        "pull_request": {"number": undo.get("number"), "url": undo.get("url")} if undo.get("number") else None,
        "pull_request_note": undo.get("note") or None,
        "culprit": {k: facts.get(f"culprit_{k}") for k in ("sha", "author", "age", "date", "subject")}
        if facts.get("culprit_sha") else None,
        "good_sha": facts.get("good_sha"), "commits_in_range": int(facts["commits_in_range"]) if facts.get("commits_in_range") else None,
        "test_runs": inv.get("test_runs"), "bisect_runs": inv.get("bisect_runs"),
        "failed_attempts": [a["output"][-500:] for a in detail["actions"] if a["status"] == "failed"],
        "test_seconds": round(sum(st.get("duration_s") or 0.0 for st in inv.get("steps", [])
                                  if st.get("phase") in TEST_PHASES), 2),
        "dry_run": bool(undo.get("dry_run")), "test_command": facts.get("test_command"),
        "test_command_source": facts.get("test_command_source"),
        "escalation": inv.get("escalation"),
        "duration_s": round(time.monotonic() - started, 2),
    }


@app.command("heal-ci")
def heal_ci(
    repo: str = typer.Option(..., "--repo", help="The repository: a clone URL or a local path."),
    bad: str = typer.Option(..., "--bad", help="The failing commit (sha, branch or tag)."),
    good: str | None = typer.Option(None, "--good", help="A commit known to pass (default: heald looks back for one)."),
    test_cmd: str | None = typer.Option(None, "--test-cmd", help="Shell command that runs the tests (default: read "
                                                                 "from the project's CI, tox, nox, Makefile or pytest "
                                                                 "configuration)."),
    install_cmd: str | None = typer.Option(None, "--install-cmd", help="Shell command that installs the dependencies "
                                                                       "into heald's environment (default: detected)."),
    quarantine: list[str] = typer.Option([], "--quarantine", help="A test known to fail (pytest node id or a prefix of "
                                                                  "one); never counted as the failure. Repeatable; "
                                                                  "adds to ci.quarantine."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Do everything but push a branch or open a pull request."),
    branch: str | None = typer.Option(None, "--branch", help="The branch that failed, the pull request's base "
                                                             "(default: the remote's default branch)."),
    github_repo: str | None = typer.Option(None, "--github-repo", help="owner/name on GitHub for the pull request "
                                                                       "(default: from the URL)."),
    timeout: float = typer.Option(3600.0, help="Seconds to wait for the healing to end."),
    json_out: bool = JsonOpt,
) -> None:
    """Reproduce a CI failure in the sandbox, find a fix the tests confirm (revert the culprit,
    declare a missing dependency, autofix lint) and push it as a branch with a draft pull request,
    or escalate with the diagnosis when heald must do no harm. Exit 0 when a fix was proposed,
    1 when the incident escalated or failed, 2 for bad input, 3 when no sandbox works."""
    from heald._git import GitError
    from heald.ci.pull_request import github_repo as parse_github
    from heald.ci.repo import RepoCache
    from heald.engine import Runtime, workflow_id
    from heald.log import configure
    from heald.models import Severity, Signal
    from heald.sandbox import SandboxUnavailable, open_sandbox
    from heald.sources.github import fingerprint

    cfg = config()
    configure("warning")
    started = time.monotonic()
    try:
        open_sandbox(cfg.sandbox)
    except SandboxUnavailable as exc:
        fail(str(exc), 3)
    local = Path(repo).expanduser()
    if local.exists():
        url = str(local.resolve())
        name = github_repo or local.resolve().name
    else:
        url = repo
        name = github_repo or parse_github("", repo, cfg.ci.github.host) or repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    cache = RepoCache(cfg.ci_work_dir, name, url, timeout=cfg.ci.git_timeout_seconds)
    try:
        cache.update(want=[bad, *([good] if good else [])])
        bad_sha = cache.resolve(bad)
        good_sha = cache.resolve(good) if good else None
    except GitError as exc:
        fail(f"--repo/--bad/--good: {exc}")
    if good_sha is not None and (good_sha == bad_sha or not cache.is_ancestor(good_sha, bad_sha)):
        fail(f"--good: {good} ({good_sha[:12]}) is not an ancestor of --bad {bad} ({bad_sha[:12]}); give a commit the "
             f"failing one descends from")
    for q in quarantine:
        if not q.strip() or len(q) > 1000 or any(ord(c) < 0x20 for c in q):
            fail(f"--quarantine: expected a test id (pytest node id or a prefix of one), got {q[:100]!r}")
    if dry_run:
        cfg.ci.dry_run = True
    if branch is None:
        branch = bad if cache.succeeds("show-ref", "--verify", "--quiet", f"refs/heads/{bad}") else _default_branch(url)
    signal = Signal(source="heal-ci", kind="ci_failed", service=name, severity=Severity.error,
                    summary=f"CI failed: {name}@{branch or '?'} {bad_sha[:10]} (heald heal-ci)",
                    labels={"repo": name, "head_sha": bad_sha, "head_branch": branch, "event": "heal-ci"},
                    annotations={"clone_url": url, **({"good_sha": good_sha} if good_sha else {}),
                                 **({"test_command": test_cmd} if test_cmd else {}),
                                 **({"install_command": install_cmd} if install_cmd else {}),
                                 **({"quarantine": "\n".join(quarantine)} if quarantine else {})},
                    fingerprint=fingerprint(name, bad_sha))
    rt = Runtime(cfg, manage_services=False, run_probes=False)
    rt.start()
    try:
        result = rt.ingest(signal, actor="cli:heal-ci")
        incident_id = result.incident_id
        if incident_id is None:
            fail("the failure was not accepted as an incident")
        if not result.opened:
            err.print(f"joined the open incident #{incident_id} for this failure")
        deadline = time.monotonic() + timeout
        last_seen = 0
        with err.status("reproducing in the sandbox…", spinner="dots") as status:
            while True:
                inc = rt.store.get_incident(incident_id)
                for e in rt.store.audit_entries(incident_id=incident_id, after_seq=last_seen):
                    last_seen = e.seq
                    if not json_out:
                        err.print(f"[dim]{e.ts.strftime('%H:%M:%S')}[/] {escape(e.event)}: {escape(e.reason[:160])}",
                                  highlight=False)
                    status.update(f"{inc.state.value}: {e.event}")
                if inc.state.terminal or inc.state == IncidentState.needs_attention:  # ended, or a human's now
                    break
                if time.monotonic() > deadline:
                    fail(f"incident #{incident_id} did not end within {timeout:g} s (state {inc.state.value}); "
                         f"it goes on in the workflow {workflow_id(incident_id)}", 1)
                time.sleep(0.5)
        data = result_of(rt.store, incident_id, started)
    finally:
        rt.stop()
    if json_out:
        print_json(data)
    else:
        _print(data)
    if data["state"] != "resolved":
        raise typer.Exit(1)


def _print(d: dict[str, Any]) -> None:
    color = "green" if d["state"] == "resolved" else "yellow"
    out.print(f"[bold]incident #{d['incident_id']}[/]: [{color}]{d['outcome']}[/] — {escape(d['reason'] or '')}")
    if d["summary"]:
        out.print(f"reproduced ({d['verdict']}): {escape(d['summary'])}")
    if d["category"]:
        out.print(f"diagnosis: {d['category']} ({d['confidence']:.2f})")
    if d["culprit"]:
        c = d["culprit"]
        out.print(f"culprit: {c['sha'][:12]} {escape(c['subject'] or '')} — {escape(c['author'] or '')}, {c['age']} old")
    if d["test_command"]:
        out.print(f"tests: {escape(d['test_command'])} (from {escape(d['test_command_source'] or 'detection')})")
    if d["dry_run"]:
        out.print(f"fix: {d['remedy']} {str(d['fix_sha'])[:12]} validated; dry run: not pushed")
    if d["branch"]:
        out.print(f"fix: {d['remedy']} {str(d['fix_sha'])[:12]} pushed as {d['branch']}")
    esc = d.get("escalation") or {}
    if d["state"] != "resolved" and esc:
        for t in esc.get("failing_tests", [])[:10]:
            out.print(f"  failing: {escape(t['id'])}: {escape(t.get('error') or '')}")
        for s in esc.get("suspects", [])[:10]:
            out.print(f"  suspect: {escape(s['path'])}:{s.get('line') or ''} ({escape(s['why'])})")
    if d["pull_request"]:
        out.print(f"pull request #{d['pull_request']['number']}: {d['pull_request']['url']}")
    elif d["pull_request_note"]:
        out.print(escape(d["pull_request_note"]))
    out.print(f"test-suite runs: {d['test_runs']} (bisection: {d['bisect_runs']}); {d['duration_s']:.1f} s")
