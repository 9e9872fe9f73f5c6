"""The webhook path end to end: GitHub's real ``workflow_run`` payload (a failure), signed with
the webhook secret, posted to ``heald serve``'s API over real HTTP; heald reproduces each failure
in the sandbox and, through the same engine as every incident, pushes a validated fix branch to
a real bare repository and opens a draft pull request on a server that answers like GitHub's
REST API — or escalates without touching the repository when it must do no harm. The four
cases run at once, as four repositories failing together would."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from heald.engine import Runtime
from heald.sources.github import signature
from tests.ci.conftest import TOKEN
from tests.ci.repos import bare_remote, culprit_case, dropped_dependency_case, lint_case, red_everywhere_case, sh
from tests.conftest import CORPUS, make_config, serving, wait_for

pytestmark = pytest.mark.slow
SECRET = "github-webhook-secret-for-the-e2e"


def payload(repo: str, sha: str) -> bytes:
    """GitHub's workflow_run fixture as a failure of ``repo`` at ``sha`` on main."""
    data = copy.deepcopy(json.loads((CORPUS / "github/workflow_run/completed.payload.json").read_text()))
    data["workflow_run"].update({"conclusion": "failure", "head_sha": sha, "head_branch": "main"})
    owner, name = repo.split("/")
    data["repository"].update({"full_name": repo, "name": name})
    data["repository"]["owner"]["login"] = owner
    return json.dumps(data).encode()


def test_webhook_failures_become_fix_pull_requests_or_escalations(open_tmp: Path, pip_cache: Path, fake_github,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    repos: dict[str, Path] = {}
    culprit_repo, culprit = culprit_case(open_tmp / "culprit")
    for name, repo in (("octo/culprit", culprit_repo), ("octo/deps", dropped_dependency_case(open_tmp / "deps")),
                       ("octo/lint", lint_case(open_tmp / "lint")), ("octo/drift", red_everywhere_case(open_tmp / "drift"))):
        repos[name] = bare_remote(repo, open_tmp / f"{name.replace('/', '-')}.git")
    gh = fake_github(repos)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    cfg = make_config(open_tmp, webhooks={"github": {"secret": SECRET}},
                      healing={"group_wait_seconds": 0.05, "max_attempts": 2},
                      ci={"work_dir": str(open_tmp / "ci"), "pip_cache_dir": str(pip_cache),
                          "github": {"api_url": gh.url},
                          "repos": {name: {"url": str(path)} for name, path in repos.items()}})
    rt = Runtime(cfg, manage_services=False, run_probes=False)
    rt.start()
    try:
        with serving(rt, role=None) as client:  # GitHub authenticates by its signature alone
            incidents = {}
            for name, remote in repos.items():
                head = sh("git", f"--git-dir={remote}", "rev-parse", "main", cwd=open_tmp).strip()
                body = payload(name, head)
                r = client.post("/v1/webhooks/github", content=body, headers={
                    "X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": str(uuid.uuid4()),
                    "X-Hub-Signature-256": signature(SECRET, body), "Content-Type": "application/json"})
                assert r.status_code == 202, r.text
                incidents[name] = r.json()["accepted"][0]["incident_id"]
            wait_for(lambda: all((st := rt.store.get_incident(i).state).terminal or st.value == "needs_attention"
                                 for i in incidents.values()),
                     timeout=480, interval=1, what="all four incidents to end or be handed over")
    finally:
        rt.stop()

    def detail(name: str) -> dict:  # type: ignore[type-arg]
        return _detail(cfg, incidents[name])

    pulls = {p["_repo"]: p for p in gh.pulls}
    for name, remedy in (("octo/culprit", "revert_commit"), ("octo/deps", "add_dependency"), ("octo/lint", "lint_autofix")):
        d = detail(name)
        assert d["incident"]["state"] == "resolved", (name, d["incident"]["closed_reason"])
        [action] = [a for a in d["actions"] if a["status"] == "succeeded"]
        assert action["remedy"] == remedy
        assert d["verifications"][-1]["passed"] and "fix branch passes in the sandbox" in json.dumps(d["verifications"])
        pr = pulls[name]
        assert pr["draft"] is True and pr["base"]["ref"] == "main" and pr["head"]["ref"].startswith("heald/")
        branch_sha = sh("git", f"--git-dir={repos[name]}", "rev-parse", pr["head"]["ref"], cwd=open_tmp).strip()
        assert branch_sha == action["undo"]["sha"] == pr["head"]["sha"]
        events = [e["event"] for e in d["timeline"]]
        for e in ("ci.reproducing", "diagnosis.made", "gate.decided", "action.succeeded", "ci.fix_proposed",
                  "verification.passed"):
            assert e in events, (name, e)
    assert culprit in pulls["octo/culprit"]["body"]
    drift = detail("octo/drift")
    assert drift["incident"]["state"] == "needs_attention" and drift["actions"] == []  # the failure stands: a human's
    assert drift["diagnoses"][-1]["category"] == "environment_drift"
    assert "octo/drift" not in pulls
    heads = subprocess.run(["git", f"--git-dir={repos['octo/drift']}", "for-each-ref", "refs/heads"],
                           capture_output=True, text=True).stdout
    assert "heald/" not in heads  # nothing pushed
    from heald.store import Store

    store = Store(cfg.database)
    assert store.verify_audit().intact
    store.close()


def _detail(cfg, incident_id: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    from heald.store import Store

    store = Store(cfg.database)
    try:
        return json.loads(json.dumps(store.incident_detail(incident_id), default=str))
    finally:
        store.close()
