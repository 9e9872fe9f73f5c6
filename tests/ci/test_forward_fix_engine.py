"""Forward fixes through heald's one engine: a ``ci_failed`` signal for a repository whose last
commit adds a test exposing an old bug (verdict ``never_passed``), the real sandbox, the real
runtime (DBOS on SQLite), the gate and the pull-request path.

Without an LLM endpoint the incident escalates and the escalation carries the suspect code
locations. With one (a local chat-completions server playing back a recorded answer) the runbook
``ci-forward-fix`` offers the remedy at risk high: the gate asks a human; once approved, the
model-written fix is validated in the sandbox and proposed as a draft pull request, and the
incident is verified on the pushed branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heald.ci.incident import investigation_data, reproduction
from heald.models import IncidentState, Severity, Signal
from heald.sources.github import fingerprint
from tests.ci.conftest import CORRECT, FAILING, STATS, TOKEN, config_for
from tests.ci.fake_chat import FakeChat
from tests.conftest import wait_for
from tests.engine.test_workflow import terminal

pytestmark = pytest.mark.slow


def failed(remote: Path, bad: str) -> Signal:
    return Signal(source="heal-ci", kind="ci_failed", service="octo/stats", severity=Severity.error,
                  summary=f"CI failed: octo/stats@main {bad[:10]}",
                  labels={"repo": "octo/stats", "head_sha": bad, "head_branch": "main"},
                  annotations={"clone_url": str(remote)}, fingerprint=fingerprint("octo/stats", bad))


def test_without_an_endpoint_the_escalation_carries_the_localization(open_tmp: Path, pip_cache: Path, project,
                                                                      start_runtime) -> None:
    remote, bad = project
    rt = start_runtime(config_for(open_tmp, pip_cache, None), manage_services=False, run_probes=False)
    inc_id = rt.ingest(failed(remote, bad)).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), timeout=300, what="the incident to end")
    # handed to a human (needs_attention: the test still fails), nothing tried
    assert done.state in (IncidentState.escalated, IncidentState.needs_attention), done.closed_reason
    rep = reproduction(rt.store.signals_for(inc_id))
    assert rep is not None and rep.labels["verdict"] == "never_passed" and "forward_fix" not in rep.labels
    assert "Suspect code" in rep.summary and "stats.py:" in rep.summary and "mean" in rep.summary
    assert rep.annotations["suspects"].startswith("1. stats.py:")
    loc = json.loads(rep.annotations["localization"])
    assert loc["functions"][0]["function"] == "mean" and any("1.5" in e for e in loc["evidence"])
    assert investigation_data(rep)["facts"]["suspects"] == rep.annotations["suspects"]
    assert rt.store.actions_for(inc_id) == []


def test_with_an_endpoint_a_human_approves_and_a_model_written_draft_is_proposed(
        open_tmp: Path, pip_cache: Path, project, start_runtime, fake_github,
        monkeypatch: pytest.MonkeyPatch) -> None:
    remote, bad = project
    chat = FakeChat([CORRECT])
    gh = fake_github({"octo/stats": remote})
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    try:
        cfg = config_for(open_tmp, pip_cache, chat, github={"api_url": gh.url})
        rt = start_runtime(cfg, manage_services=False, run_probes=False)
        inc_id = rt.ingest(failed(remote, bad)).incident_id
        wait_for(lambda: rt.store.get_incident(inc_id).state in (IncidentState.awaiting_approval,)
                 or terminal(rt, inc_id), timeout=300, what="the approval wait")
        inc = rt.store.get_incident(inc_id)
        assert inc.state == IncidentState.awaiting_approval, inc.closed_reason
        rep = reproduction(rt.store.signals_for(inc_id))
        assert rep is not None and rep.labels.get("forward_fix") == "ready"
        [decision] = rt.store.incident_detail(inc_id)["decisions"]
        assert decision["candidate"]["remedy"] == "forward_fix" and decision["candidate"]["risk"] == "high"
        assert chat.requests == []  # nothing was asked of the model before a human approved
        assert decision["required_approvals"] >= 1
        for approver in ("alice", "bob")[:decision["required_approvals"]]:
            rt.approve(inc_id, approver, "approve")
        done = wait_for(lambda: terminal(rt, inc_id), timeout=300, what="the incident to end")
        assert done.state == IncidentState.resolved, done.closed_reason
    finally:
        chat.close()
    usage = rt.store.llm_usage_for(inc_id)
    assert [c["reasoner"] for c in usage["calls"]] == ["forward_fix"] and usage["total"]["prompt_tokens"] == 1200
    assert usage["total"]["cost_usd"] == pytest.approx(0.0036)
    [create] = [r for r in gh.requests if r["method"] == "POST"]
    body = json.loads(create["body"])
    assert body["draft"] is True and body["title"].startswith("[model-written]") and FAILING in body["title"]
    assert "## Localization" in body["body"] and "### Round 1: valid" in body["body"]
    [action] = [a for a in rt.store.actions_for(inc_id) if a.remedy == "forward_fix"]
    fixed = json.loads(json.dumps(action.undo))["sha"]
    from tests.ci.repos import sh

    assert sh("git", f"--git-dir={remote}", "show", f"{fixed}:stats.py", cwd=open_tmp) == \
        STATS.replace("return total(xs) // len(xs)", "return total(xs) / len(xs)")
