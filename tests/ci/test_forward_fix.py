"""Forward fixes end to end: a real git repository whose new test exposes an old bug, the real
sandbox (bubblewrap) for every install and test run, the real ``openai`` SDK against a local
chat-completions server playing back recorded answers, and the pull request through githubkit
against the local GitHub REST server.

Cases: a correct patch in one round (proposed as a draft, model-written pull request); a wrong
patch, then a correct one after the error output went back; an edit of a test file (refused);
an edit outside the tree (refused); a patch that passes the failing test but breaks another
(not proposed); an endpoint that times out (the localization is kept for the escalation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from heald.ci import CiJob
from heald.ci.repair import ForwardFix, forward_fix, propose_forward_fix
from heald.store import Store
from tests.ci.conftest import CORRECT, FAILING, STATS, TOKEN, answer, config_for
from tests.ci.fake_chat import FakeChat
from tests.ci.repos import sh

pytestmark = pytest.mark.slow

WRONG = answer(("stats.py", "return total(xs) // len(xs)", "return round(total(xs) / len(xs))"), why="round it")
BREAKS_OTHER = answer(("stats.py", "return total(xs) // len(xs)", "return 1.5"), why="the answer is 1.5")
TEST_EDIT = answer(("tests/test_stats.py", "== 1.5", "== 1"), why="the test is wrong")
OUTSIDE = answer(("../../outside.py", "x", "y"), why="fix it elsewhere")


@pytest.fixture
def chat() -> Iterator[list[FakeChat]]:
    servers: list[FakeChat] = []
    yield servers
    for s in servers:
        s.close()


def run(open_tmp: Path, pip_cache: Path, project: tuple[Path, str], chat: list[FakeChat], answers: list[object],
        **bounds: object) -> tuple[ForwardFix, FakeChat]:
    server = FakeChat(answers)
    chat.append(server)
    remote, bad = project
    cfg = config_for(open_tmp, pip_cache, server, forward_fix=bounds)
    return forward_fix(cfg, CiJob(repo="octo/stats", url=str(remote), bad=bad, branch="main")), server


def assert_localized(ff: ForwardFix) -> None:
    assert ff.failing_tests == [FAILING]
    top = ff.localization.functions[0]
    assert (top.path, top.function) == ("stats.py", "mean"), ff.localization.as_dict()
    assert any("traceback" in r or "called by the failing test" in r for r in top.reasons)
    assert ff.localization.files[0].path == "stats.py"
    assert any("1.5" in e for e in ff.localization.evidence)


def test_correct_patch_in_one_round_is_proposed_as_a_model_written_draft(
        open_tmp: Path, pip_cache: Path, project: tuple[Path, str], chat: list[FakeChat], fake_github,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ff, server = run(open_tmp, pip_cache, project, chat, [CORRECT])
    assert ff.outcome == "fixed", ff.as_dict()
    assert_localized(ff)
    [rnd] = ff.rounds
    assert rnd.outcome == "valid" and rnd.changed == ["stats.py"] and rnd.lines_changed == 2
    phases = [s.phase for s in rnd.steps]
    assert phases[:2] == ["validate-install", "failing-tests"] and "validate" in phases
    assert ff.usage == {"calls": 1, "prompt_tokens": 1200, "completion_tokens": 150, "cost_usd": 0.0036}
    # the model saw the localized code as data, and the failing output
    [req] = server.requests
    doc = json.loads(req["messages"][1]["content"])
    assert req["model"] == "recorded-model" and "never an instruction" in req["messages"][0]["content"]
    assert any("return total(xs) // len(xs)" in c["text"] for c in doc["data"]["code"])
    assert FAILING in doc["data"]["failing_tests"]
    # proposed through the pull-request path: pushed, draft, marked as model-written
    remote, bad = project
    gh = fake_github({"octo/stats": remote})
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    cfg = config_for(open_tmp, pip_cache, server, github={"api_url": gh.url}, pull_requests={"draft": False})
    store = Store(f"sqlite:///{open_tmp / 'heald.db'}")
    store.migrate()
    try:
        proposal = propose_forward_fix(cfg, store, ff, branch="main", incident_id=None)
    finally:
        store.close()
    assert proposal.number == 1 and proposal.branch.startswith("heald/forward-fix-")
    assert sh("git", f"--git-dir={remote}", "show", f"{proposal.sha}:stats.py", cwd=open_tmp) == \
        STATS.replace("return total(xs) // len(xs)", "return total(xs) / len(xs)")
    assert sh("git", f"--git-dir={remote}", "rev-parse", f"{proposal.sha}^", cwd=open_tmp).strip() == bad
    [create] = [r for r in gh.requests if r["method"] == "POST"]
    body = json.loads(create["body"])
    assert body["draft"] is True and body["title"].startswith("[model-written]")
    text = body["body"]
    for expected in ("model-written", "A human must review it", "## Localization", "`stats.py:", "mean",
                     "### Round 1: valid", "| failing-tests |", "| validate |", "1200 prompt + 150 completion",
                     "$0.0036", FAILING):
        assert expected in text, expected


def test_wrong_patch_then_correct_after_the_error_output(open_tmp: Path, pip_cache: Path, project: tuple[Path, str],
                                                        chat: list[FakeChat]) -> None:
    ff, server = run(open_tmp, pip_cache, project, chat, [WRONG, CORRECT])
    assert [r.outcome for r in ff.rounds] == ["failing_tests_fail", "valid"], ff.as_dict()
    assert ff.outcome == "fixed" and ff.best is ff.rounds[1]
    assert ff.usage["calls"] == 2 and ff.usage["prompt_tokens"] == 2400
    # round 2's prompt carries round 1's edits and the failing output
    doc = json.loads(server.requests[1]["messages"][1]["content"])
    [earlier] = doc["data"]["earlier_attempts"]
    assert earlier["result"] == "failing_tests_fail" and "round(" in earlier["your_edits"][0]["replace"]
    assert "assert 2 == 1.5" in earlier["output"] or "test_mean_is_exact" in earlier["output"]


def test_edits_of_test_files_and_paths_outside_the_tree_are_refused(
        open_tmp: Path, pip_cache: Path, project: tuple[Path, str], chat: list[FakeChat]) -> None:
    ff, server = run(open_tmp, pip_cache, project, chat, [TEST_EDIT, OUTSIDE], max_rounds=2)
    assert [r.outcome for r in ff.rounds] == ["refused", "refused"], ff.as_dict()
    assert "test file" in ff.rounds[0].reason and "never edits tests" in ff.rounds[0].reason
    assert "'..'" in ff.rounds[1].reason or ".." in ff.rounds[1].reason
    assert ff.outcome == "not_fixed" and ff.best is None
    assert not (open_tmp / "outside.py").exists() and not (open_tmp / "ci" / "outside.py").exists()
    assert all(not r.steps for r in ff.rounds)  # nothing refused ever reached the sandbox
    remote, bad = project
    assert sh("git", f"--git-dir={remote}", "for-each-ref", "--format=%(refname)", cwd=open_tmp).split() == \
        ["refs/heads/main"]


def test_a_patch_that_breaks_another_test_is_not_proposed(open_tmp: Path, pip_cache: Path, project: tuple[Path, str],
                                                          chat: list[FakeChat]) -> None:
    ff, _ = run(open_tmp, pip_cache, project, chat, [BREAKS_OTHER], max_rounds=1)
    [rnd] = ff.rounds
    assert rnd.outcome == "breaks_others", ff.as_dict()
    assert rnd.fixed == 1 and "tests/test_stats.py::test_mean_of_evens" in rnd.broken
    assert ff.outcome == "not_fixed" and ff.best is None
    with pytest.raises(ValueError, match="no valid forward fix"):
        propose_forward_fix(config_for(open_tmp, pip_cache, None), None, ff, branch="main")


def test_an_endpoint_that_times_out_leaves_the_localization_for_the_escalation(
        open_tmp: Path, pip_cache: Path, project: tuple[Path, str], chat: list[FakeChat]) -> None:
    server = FakeChat([{"sleep": 3}])
    chat.append(server)
    remote, bad = project
    cfg = config_for(open_tmp, pip_cache, server)
    cfg.llm.timeout_seconds = 0.5
    ff = forward_fix(cfg, CiJob(repo="octo/stats", url=str(remote), bad=bad, branch="main"))
    assert ff.outcome == "endpoint_failed" and "Timeout" in ff.reason, ff.as_dict()
    assert [r.outcome for r in ff.rounds] == ["endpoint_failed"] and ff.best is None
    assert_localized(ff)
    assert "stats.py" in ff.localization.summary() and "mean" in ff.localization.summary()
