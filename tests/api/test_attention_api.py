"""A human's actions on an open incident over the real API and the real CLI: retry, acknowledge,
resolve, each audited with the actor's identity; incidents that need attention count and list
as open; bad input is a clear 4xx (or a CLI error), never a 5xx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from heald.models import IncidentState, OutcomeResult
from tests.api.conftest import api_config, serve
from tests.cli.test_cli import env_for
from tests.conftest import bearer, make_token, run_heald, wait_for

SIGNAL = {"source": "my-monitor", "service": "svc", "summary": "svc broken",
          "labels": {"alertname": "SvcBroken", "service": "svc"}}


def handed_over(client: httpx.Client, rt: Any) -> int:  # type: ignore[no-untyped-def]
    """An incident that needs attention: the medium-risk restart awaits approval, a human
    rejects it while the signal still fires."""
    inc = client.post("/v1/signals", json=SIGNAL).json()["incident_id"]
    wait_for(lambda: rt.store.get_incident(inc).state == IncidentState.awaiting_approval, what="approval wait")
    assert client.post(f"/v1/incidents/{inc}/reject", json={"comment": "not like this"}).status_code == 200
    wait_for(lambda: rt.store.get_incident(inc).state == IncidentState.needs_attention, what="hand-over")
    return inc


def audited(rt: Any, inc: int, event: str, action: str | None = None) -> list[Any]:  # type: ignore[no-untyped-def]
    return [e for e in rt.store.audit_entries(incident_id=inc) if e.event == event
            and (action is None or e.details.get("human_action") == action)]


def test_retry_ack_resolve_over_the_api(tmp_path: Path) -> None:
    with serve(api_config(tmp_path, healing={"attention_check_seconds": 0.1})) as (client, rt):
        inc = handed_over(client, rt)
        assert "rejected by root: not like this" in rt.store.get_incident(inc).closed_reason

        summary = client.get("/v1/incidents/summary").json()
        assert summary["open"] == 1 and summary["needs_attention"] == 1
        assert [i["id"] for i in client.get("/v1/incidents", params={"open": "true"}).json()] == [inc]
        assert [i["id"] for i in client.get("/v1/incidents", params={"state": "needs_attention"}).json()] == [inc]

        approver = httpx.Client(base_url=str(client.base_url), timeout=10,
                                headers=bearer(make_token(rt.store, "approver", "alice")))
        r = approver.post(f"/v1/incidents/{inc}/ack", json={"comment": "on it"})
        assert r.status_code == 200 and r.json()["by"] == "user:alice"
        [ack] = audited(rt, inc, "incident.acknowledged")
        assert ack.actor == "user:alice" and ack.details["comment"] == "on it"

        r = approver.post(f"/v1/incidents/{inc}/retry", json={"comment": "try once more"})
        assert r.status_code == 200 and r.json()["state"] == "diagnosing"
        [retry] = audited(rt, inc, "incident.transition", "retry")
        assert retry.actor == "user:alice" and "try once more" in retry.reason
        # heald asks again (a new round: the gate wants an approval for the medium-risk restart)
        wait_for(lambda: rt.store.get_incident(inc).state == IncidentState.awaiting_approval, what="a new approval wait")
        assert len(rt.store.decisions_for(inc)) == 2
        again = approver.post(f"/v1/incidents/{inc}/retry", json={})
        assert again.status_code == 409 and "awaiting_approval" in again.json()["detail"]

        r = approver.post(f"/v1/incidents/{inc}/resolve", json={"comment": "fixed the disk by hand"})
        assert r.status_code == 200 and r.json()["state"] == "resolved"
        [resolve] = audited(rt, inc, "incident.transition", "resolve")
        assert resolve.actor == "user:alice" and "fixed the disk by hand" in resolve.reason
        assert [o.result for o in rt.store.outcomes(incident_id=inc) if o.attempt == 0] == \
            [OutcomeResult.resolved_by_human]
        assert rt.store.actions_for(inc) == []  # the approval wait ended with the incident: nothing acted
        assert client.get("/v1/incidents/summary").json()["open"] == 0
        late = approver.post(f"/v1/incidents/{inc}/ack", json={})
        assert late.status_code == 409 and "ended" in late.json()["detail"]
        assert rt.store.verify_audit().intact


def test_bad_input_is_refused_with_a_clear_4xx(tmp_path: Path) -> None:
    with serve(api_config(tmp_path, healing={"attention_check_seconds": 0.1})) as (client, rt):
        inc = handed_over(client, rt)
        viewer = bearer(make_token(rt.store, "viewer", "vera"))
        operator = bearer(make_token(rt.store, "operator", "otto"))
        for action in ("retry", "ack", "resolve"):
            unknown = client.post(f"/v1/incidents/999999/{action}", json={"comment": "x"})
            assert unknown.status_code == 404 and "no incident 999999" in unknown.text, action
            long = client.post(f"/v1/incidents/{inc}/{action}", json={"comment": "x" * 5001})
            assert long.status_code == 422 and "comment" in long.text, action
            for headers in (viewer, operator):
                denied = client.post(f"/v1/incidents/{inc}/{action}", json={"comment": "x"}, headers=headers)
                assert denied.status_code == 403 and "needs role approver" in denied.text, action
            extra = client.post(f"/v1/incidents/{inc}/{action}", json={"comment": "x", "force": True})
            assert extra.status_code == 422 and "force" in extra.text, action
            other = client.post(f"/v1/incidents/{inc}/{action}", json={"by": "mallory", "comment": "x"})
            assert other.status_code == 403 and "cannot act as mallory" in other.text, action
        nameless = client.post(f"/v1/incidents/{inc}/resolve", json={"comment": "  "})
        assert nameless.status_code == 422 and "comment: required" in nameless.text
        assert client.post("/v1/incidents/0/ack", json={}).status_code == 422
        assert client.post(f"/v1/incidents/{inc}/ack", content=b"{", headers={"content-type": "application/json"}) \
            .status_code == 422
        assert rt.store.get_incident(inc).state == IncidentState.needs_attention
        assert audited(rt, inc, "incident.acknowledged") == []


def test_retry_ack_resolve_from_the_cli(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    with serve(api_config(tmp_path, healing={"attention_check_seconds": 0.1})) as (client, rt):
        inc = handed_over(client, rt)
        bob = make_token(rt.store, "approver", "bob")
        viewer = make_token(rt.store, "viewer", "vera")

        status = run_heald("status", "--json", env=env, cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        st = json.loads(status.stdout)
        assert st["open"] == 1 and st["needs_attention"] == 1 and st["needing_attention"][0]["id"] == inc
        listed = run_heald("incidents", "--open", "--json", env=env, cwd=tmp_path)
        assert [i["id"] for i in json.loads(listed.stdout)] == [inc]
        text = run_heald("status", env=env, cwd=tmp_path)
        assert "needs attention" in text.stdout and "rejected by root" in text.stdout

        denied = run_heald("incidents", "ack", str(inc), "--token", viewer, env=env, cwd=tmp_path)
        assert denied.returncode == 3 and "vera has role viewer" in denied.stderr
        missing = run_heald("incidents", "ack", "424242", "--token", bob, env=env, cwd=tmp_path)
        assert missing.returncode == 1 and "no incident 424242" in missing.stderr
        long = run_heald("incidents", "ack", str(inc), "--token", bob, "--comment", "x" * 5001, env=env, cwd=tmp_path)
        assert long.returncode == 2 and "--comment: at most 5000" in long.stderr
        no_comment = run_heald("incidents", "resolve", str(inc), "--token", bob, env=env, cwd=tmp_path)
        assert no_comment.returncode == 2 and "--comment" in no_comment.stderr

        ack = run_heald("incidents", "ack", str(inc), "--token", bob, "-m", "paged the owner", env=env, cwd=tmp_path)
        assert ack.returncode == 0 and "acknowledged" in ack.stdout, ack.stderr
        retry = run_heald("incidents", "retry", str(inc), "--token", bob, "--json", env=env, cwd=tmp_path)
        assert retry.returncode == 0 and json.loads(retry.stdout)["state"] == "diagnosing", retry.stderr
        wait_for(lambda: rt.store.get_incident(inc).state == IncidentState.awaiting_approval,
                 what="the CLI's retry to wake the workflow")
        resolve = run_heald("incidents", "resolve", str(inc), "--token", bob, "--comment", "rebuilt the host",
                            env=env, cwd=tmp_path)
        assert resolve.returncode == 0 and "resolved by you" in resolve.stdout, resolve.stderr
        assert rt.store.get_incident(inc).state == IncidentState.resolved
        actors = {(e.event, e.details.get("human_action"), e.actor) for e in rt.store.audit_entries(incident_id=inc)
                  if e.actor == "user:bob"}
        assert actors == {("incident.acknowledged", "acknowledge", "user:bob"),
                          ("incident.transition", "retry", "user:bob"),
                          ("incident.transition", "resolve", "user:bob")}
        wait_for(lambda: rt.store.get_incident(inc).state == IncidentState.resolved and not [
            e for e in rt.store.audit_entries(incident_id=inc) if e.event == "lease.acquired"], what="settled")
        assert run_heald("incidents", "--json", env=env, cwd=tmp_path).returncode == 0  # the plain listing still works
