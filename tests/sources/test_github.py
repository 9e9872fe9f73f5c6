"""The GitHub webhook source on GitHub's real payloads (octokit/webhooks fixtures) and GitHub's
documented signature test vector; the API's answers to it over real HTTP."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from heald.engine import Runtime
from heald.sources import SourceError, SourceIgnored
from heald.sources.github import GitHubSource, fingerprint, signature, verify_signature
from tests.conftest import CORPUS, make_config, serving

GH = CORPUS / "github"
MORE = Path(__file__).parent / "vendor" / "github"  # octokit/webhooks examples beyond the corpus
SOURCE = GitHubSource()


def fixture(name: str) -> dict[str, Any]:
    return json.loads((GH / name).read_text())


def failed(name: str, event: str) -> dict[str, Any]:
    """A real payload whose run failed: GitHub's fixture with its conclusion set to failure."""
    data = copy.deepcopy(fixture(name))
    data[event]["conclusion"] = "failure"
    return data


def headers(event: str, delivery: str | None = None) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4())}


def test_githubs_documented_signature_test_vector() -> None:
    vector = json.loads((GH / "SIGNATURE_TEST_VECTOR.json").read_text())
    body = vector["payload"].encode()
    assert signature(vector["secret"], body) == vector["X-Hub-Signature-256"]
    assert verify_signature({"x-hub-signature-256": vector["X-Hub-Signature-256"]}, body, vector["secret"])
    assert SOURCE.verify({"x-hub-signature-256": vector["X-Hub-Signature-256"]}, body, vector["secret"])
    assert not verify_signature({"x-hub-signature-256": vector["X-Hub-Signature-256"]}, body, "another secret")
    assert not verify_signature({"x-hub-signature-256": vector["X-Hub-Signature-256"]}, body + b" ", vector["secret"])
    assert not verify_signature({}, body, vector["secret"])
    assert not verify_signature({"x-hub-signature-256": vector["signature"]}, body, vector["secret"])  # no sha256=
    assert not verify_signature({"x-hub-signature-256": "sha1=" + vector["signature"]}, body, vector["secret"])


def test_a_failed_workflow_run_is_a_ci_signal() -> None:
    data = failed("workflow_run/completed.payload.json", "workflow_run")
    [sig] = SOURCE.parse(headers("workflow_run", "d-1"), json.dumps(data).encode())
    assert sig.source == "github" and sig.kind == "ci_failed" and sig.service == "octo-org/octo-repo"
    assert sig.labels == {"repo": "octo-org/octo-repo", "head_sha": "3484a3fb816e0859fd6e1cea078d76385ff50625",
                          "head_branch": "master", "event": "workflow_run", "conclusion": "failure",
                          "workflow": "ci(action): update actions/setup-node digest to 8c91899"}
    assert sig.annotations["clone_url"] == "https://github.com/octo-org/octo-repo.git"
    assert sig.annotations["html_url"] == "https://github.com/octo-org/octo-repo/actions/runs/289782451"
    assert sig.annotations["delivery"] == "d-1" and sig.annotations["default_branch"] == "master"
    assert sig.fingerprint == fingerprint("octo-org/octo-repo", "3484a3fb816e0859fd6e1cea078d76385ff50625")
    assert "3484a3fb81" in sig.summary and sig.severity.value == "error"


def test_a_failed_workflow_job_names_its_failed_step() -> None:
    body = (GH / "workflow_job/completed.failure.with-organization.payload.json").read_bytes()
    [sig] = SOURCE.parse(headers("workflow_job"), body)
    assert sig.labels["job"] == "linters" and sig.labels["workflow"] == "CodeQL"
    assert sig.annotations["failed_steps"] == "Run yarn run format-check"
    assert sig.labels["head_sha"] == "3484a3fb816e0859fd6e1cea078d76385ff50625"


def test_events_of_one_commit_share_a_fingerprint() -> None:
    job = json.loads((GH / "workflow_job/completed.failure.with-organization.payload.json").read_text())
    check = failed("check_run/completed.payload.json", "check_run")
    check["check_run"]["head_sha"] = job["workflow_job"]["head_sha"]
    check["check_run"]["output"]["summary"] = "tests/test_x.py::test_y FAILED"
    [a] = SOURCE.parse(headers("workflow_job"), json.dumps(job).encode())
    [b] = SOURCE.parse(headers("check_run"), json.dumps(check).encode())
    assert a.fingerprint == b.fingerprint  # same repository (Codertocat/Hello-World), same commit
    assert b.annotations["check_output"] == "tests/test_x.py::test_y FAILED"
    assert b.labels["workflow"] == "Octocoders-linter" and b.labels["head_branch"] == "changes"


@pytest.mark.parametrize(("name", "event", "why"), [
    ("workflow_run/completed.payload.json", "workflow_run", "workflow_run conclusion 'success'"),
    ("check_run/completed.payload.json", "check_run", "check_run conclusion 'success'"),
    ("push/payload.json", "push", "event 'push' is not a CI result"),
    ("pull_request/opened.payload.json", "pull_request", "event 'pull_request' is not a CI result"),
])
def test_other_events_are_ignored_with_the_reason(name: str, event: str, why: str) -> None:
    with pytest.raises(SourceIgnored) as ignored:
        SOURCE.parse(headers(event), (GH / name).read_bytes())
    assert why in ignored.value.reason


def test_an_unfinished_run_and_a_ping_are_ignored() -> None:
    data = failed("workflow_run/completed.payload.json", "workflow_run")
    data["action"] = "in_progress"
    with pytest.raises(SourceIgnored, match="action 'in_progress'"):
        SOURCE.parse(headers("workflow_run"), json.dumps(data).encode())
    with pytest.raises(SourceIgnored, match="ping"):
        SOURCE.parse(headers("ping"), json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode())


def vendor(name: str) -> dict[str, Any]:
    return json.loads((MORE / name).read_text())


@pytest.mark.parametrize("conclusion", ["failure", "timed_out"])
def test_a_failed_check_suite_is_a_ci_failure(conclusion: str) -> None:
    data = vendor("check_suite/completed.payload.json")
    with pytest.raises(SourceIgnored, match="check_suite conclusion 'success'"):
        SOURCE.parse(headers("check_suite"), json.dumps(data).encode())  # as GitHub documents it
    data["check_suite"]["conclusion"] = conclusion
    [sig] = SOURCE.parse(headers("check_suite"), json.dumps(data).encode())
    assert sig.kind == "ci_failed" and sig.labels["event"] == "check_suite" and sig.labels["conclusion"] == conclusion
    assert sig.labels["head_sha"] == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    assert sig.labels["head_branch"] == "changes" and sig.labels["workflow"] == "octocoders-linter"
    assert sig.fingerprint == fingerprint("Codertocat/Hello-World", "ec26c3e57ca3a959ca5aad62de7213c562f8c821")


@pytest.mark.parametrize("state", ["failure", "error"])
def test_a_failed_commit_status_is_a_ci_failure(state: str) -> None:
    data = vendor("status/payload.json")
    with pytest.raises(SourceIgnored, match="status state 'success'"):
        SOURCE.parse(headers("status"), json.dumps(data).encode())
    data.update(state=state, target_url="https://ci.example.com/build/12", description="3 tests failed")
    [sig] = SOURCE.parse(headers("status"), json.dumps(data).encode())
    assert sig.labels["event"] == "status" and sig.labels["conclusion"] == state
    assert sig.labels["head_sha"] == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    assert sig.labels["workflow"] == "default" and sig.labels["head_branch"] == "master"
    assert sig.annotations["html_url"] == "https://ci.example.com/build/12"
    assert sig.annotations["check_output"] == "3 tests failed"


@pytest.mark.parametrize("state", ["failure", "error"])
def test_a_failed_deployment_is_a_ci_failure(state: str) -> None:
    data = vendor("deployment_status/payload.json")
    with pytest.raises(SourceIgnored, match="deployment_status state 'success'"):
        SOURCE.parse(headers("deployment_status"), json.dumps(data).encode())
    data["deployment_status"]["state"] = state
    [sig] = SOURCE.parse(headers("deployment_status"), json.dumps(data).encode())
    assert sig.labels["event"] == "deployment_status" and sig.labels["conclusion"] == state
    assert sig.labels["head_sha"] == "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
    assert sig.labels["head_branch"] == "master" and sig.labels["workflow"] == "deploy production"


def test_a_workflow_that_could_not_start_is_a_ci_failure() -> None:
    data = fixture("workflow_run/completed.payload.json")
    data["workflow_run"]["conclusion"] = "startup_failure"
    [sig] = SOURCE.parse(headers("workflow_run"), json.dumps(data).encode())
    assert sig.labels["conclusion"] == "startup_failure"
    job = json.loads((GH / "workflow_job/completed.failure.with-organization.payload.json").read_text())
    job["workflow_job"]["conclusion"] = "startup_failure"  # not a conclusion of a job
    with pytest.raises(SourceIgnored):
        SOURCE.parse(headers("workflow_job"), json.dumps(job).encode())


def test_a_form_encoded_delivery_is_read_from_its_payload_field() -> None:
    body = urlencode({"payload": json.dumps(failed("workflow_run/completed.payload.json", "workflow_run"))}).encode()
    form = {**headers("workflow_run"), "content-type": "application/x-www-form-urlencoded"}
    [sig] = SOURCE.parse(form, body)
    assert sig.labels["head_sha"] == "3484a3fb816e0859fd6e1cea078d76385ff50625"
    for bad, field in ((b"payload=%7B&payload=%7B", "payload"), (b"other=1", "payload"), (b"\xff=\xfe", "(body)"),
                       (b"payload=not-json", "(body)")):
        with pytest.raises(SourceError) as err:
            SOURCE.parse(form, bad)
        assert err.value.field == field, (bad, str(err.value))


def test_malformed_new_events_name_the_field() -> None:
    status = vendor("status/payload.json")
    status.update(state="failure", branches="master")
    with pytest.raises(SourceError) as err:
        SOURCE.parse(headers("status"), json.dumps(status).encode())
    assert err.value.field == "branches"
    deploy = vendor("deployment_status/payload.json")
    deploy["deployment_status"]["state"] = "error"
    deploy["deployment"]["sha"] = ""
    with pytest.raises(SourceError) as err:
        SOURCE.parse(headers("deployment_status"), json.dumps(deploy).encode())
    assert err.value.field == "deployment.sha"
    suite = vendor("check_suite/completed.payload.json")
    suite["check_suite"].update(conclusion="failure", app=["x"])
    with pytest.raises(SourceError) as err:
        SOURCE.parse(headers("check_suite"), json.dumps(suite).encode())
    assert err.value.field == "check_suite.app"


def test_malformed_payloads_name_the_field() -> None:
    with pytest.raises(SourceError, match="headers.X-GitHub-Event"):
        SOURCE.parse({}, b"{}")
    with pytest.raises(SourceError, match=r"\(body\): expected a JSON object"):
        SOURCE.parse(headers("workflow_run"), b"{not json")
    data = failed("workflow_run/completed.payload.json", "workflow_run")
    del data["repository"]["full_name"]
    with pytest.raises(SourceError) as err:
        SOURCE.parse(headers("workflow_run"), json.dumps(data).encode())
    assert err.value.field == "repository.full_name"
    data = failed("workflow_run/completed.payload.json", "workflow_run")
    data["workflow_run"]["head_sha"] = ""
    with pytest.raises(SourceError, match="workflow_run.head_sha: expected a non-empty string"):
        SOURCE.parse(headers("workflow_run"), json.dumps(data).encode())


WEBHOOK_SECRET = "github-webhook-secret-for-tests"


def signed(body: bytes, event: str, delivery: str | None = None) -> dict[str, str]:
    """GitHub's headers for ``body``, signed with the configured webhook secret."""
    return {**headers(event, delivery), "X-Hub-Signature-256": signature(WEBHOOK_SECRET, body)}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Runtime]]:
    cfg = make_config(tmp_path, healing={"group_wait_seconds": 60},  # incidents stay put while the test looks
                      webhooks={"github": {"secret": WEBHOOK_SECRET}})
    rt = Runtime(cfg, manage_services=False, run_probes=False)
    rt.start()
    try:
        with serving(rt, role=None) as client:  # GitHub authenticates by its signature alone
            yield client, rt
    finally:
        rt.stop()


def test_the_api_accepts_a_failure_once_and_drops_its_redelivery(served) -> None:
    client, rt = served
    body = json.dumps(failed("workflow_run/completed.payload.json", "workflow_run")).encode()
    unsigned = client.post("/v1/webhooks/github", content=body, headers=headers("workflow_run", "72d3162e-cc78"))
    assert unsigned.status_code == 401 and "signature" in unsigned.json()["detail"]
    first = client.post("/v1/webhooks/github", content=body, headers=signed(body, "workflow_run", "72d3162e-cc78"))
    assert first.status_code == 202, first.text
    [accepted] = first.json()["accepted"]
    assert accepted["opened"] and accepted["incident_id"] == 1
    again = client.post("/v1/webhooks/github", content=body, headers=signed(body, "workflow_run", "72d3162e-cc78"))
    assert again.status_code == 202
    assert again.json() == {"accepted": [], "duplicate": True, "delivery": "72d3162e-cc78",
                            "reason": "delivery 72d3162e-cc78 was accepted before; this redelivery is dropped"}
    assert len(rt.store.signals_for(1)) == 1
    other = client.post("/v1/webhooks/github", content=body, headers=signed(body, "workflow_run", "another-delivery"))
    assert other.json()["accepted"][0]["incident_id"] == 1 and not other.json()["accepted"][0]["opened"]
    assert len(rt.store.signals_for(1)) == 2  # a new delivery about the same commit joins its incident


def test_the_api_checks_the_signature_of_a_form_delivery_over_its_raw_body(served) -> None:
    client, rt = served
    payload = json.dumps(failed("workflow_run/completed.payload.json", "workflow_run"))
    body = urlencode({"payload": payload}).encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    forged = client.post("/v1/webhooks/github", content=body,
                         headers={**signed(payload.encode(), "workflow_run"), **form})  # signed the JSON, not the form
    assert forged.status_code == 401 and rt.store.list_incidents() == []
    r = client.post("/v1/webhooks/github", content=body, headers={**signed(body, "workflow_run"), **form})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"][0]["opened"]


def test_the_api_answers_ignored_events_with_202_and_the_reason(served) -> None:
    client, rt = served
    push = (GH / "push/payload.json").read_bytes()
    r = client.post("/v1/webhooks/github", content=push, headers=signed(push, "push"))
    assert r.status_code == 202
    assert r.json()["ignored"] is True and "not a CI result" in r.json()["reason"]
    bad = client.post("/v1/webhooks/github", content=b'{"action": "completed"}',
                      headers=signed(b'{"action": "completed"}', "workflow_run"))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "workflow_run"]
    assert rt.store.list_incidents() == []
