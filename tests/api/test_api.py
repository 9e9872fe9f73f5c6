"""The HTTP API over real HTTP on loopback (uvicorn in a thread, httpx as the client)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import bearer, make_token, wait_for

SIGNAL = {"source": "my-monitor", "service": "svc", "summary": "svc broken",
          "labels": {"alertname": "SvcBroken", "service": "svc"}}


def test_signal_accepted_and_incident_served_with_timeline(api) -> None:
    client, rt = api
    r = client.post("/v1/signals", json=SIGNAL)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["opened"] and body["incident_id"] == 1
    wait_for(lambda: client.get("/v1/incidents", params={"state": "awaiting_approval"}).json(), what="awaiting approval")
    detail = client.get("/v1/incidents/1").json()
    assert detail["incident"]["state"] == "awaiting_approval"
    assert detail["diagnoses"][0]["category"] == "svc_broken"
    assert detail["decisions"][0]["kind"] == "approval"
    events = [e["event"] for e in detail["timeline"]]
    assert events[0] == "incident.opened" and "gate.decided" in events
    assert client.get("/v1/incidents", params={"state": "resolved"}).json() == []
    assert client.get("/v1/incidents/99").status_code == 404


def test_invalid_signal_gets_422_naming_the_field_and_loses_nothing(api) -> None:
    client, rt = api
    assert client.post("/v1/signals", json=SIGNAL).status_code == 202
    bad = client.post("/v1/signals", json={**SIGNAL, "severity": "apocalyptic"})
    assert bad.status_code == 422
    [err] = bad.json()["detail"]
    assert err["loc"] == ["body", "severity"]
    assert "info" in err["msg"] and "critical" in err["msg"]
    missing = client.post("/v1/signals", json={"summary": "no source"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "source"]
    typo = client.post("/v1/signals", json={**SIGNAL, "lables": {}})
    assert typo.status_code == 422 and typo.json()["detail"][0]["loc"] == ["body", "lables"]
    not_json = client.post("/v1/signals", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert rt.store.count_signals_by_source() == {"my-monitor": 1}


def test_generic_webhook_source(api) -> None:
    client, rt = api
    r = client.post("/v1/webhooks/generic", json=[SIGNAL, {**SIGNAL, "summary": "again"}])
    assert r.status_code == 202
    accepted = r.json()["accepted"]
    assert accepted[0]["opened"] and accepted[1]["incident_id"] == accepted[0]["incident_id"]
    bad = client.post("/v1/webhooks/generic", json=[SIGNAL, {"service": "x"}])
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "[1]", "source"]
    assert client.post("/v1/webhooks/nosuch", json=SIGNAL).status_code == 404


def test_approve_and_reject_endpoints(api) -> None:
    client, rt = api
    alice, bob = bearer(make_token(rt.store, "approver", "alice")), bearer(make_token(rt.store, "approver", "bob"))
    inc = client.post("/v1/signals", json=SIGNAL).json()["incident_id"]
    early = client.post(f"/v1/incidents/{inc}/approve", json={}, headers=alice)
    if early.status_code == 409:  # still deciding: the answer names the state
        assert "not awaiting_approval" in early.json()["detail"]
    wait_for(lambda: client.get(f"/v1/incidents/{inc}").json()["incident"]["state"] == "awaiting_approval", what="wait")
    assert client.post(f"/v1/incidents/{inc}/approve", json={"approver": 5}, headers=alice).status_code == 422
    posing = client.post(f"/v1/incidents/{inc}/approve", json={"approver": "bob"}, headers=alice)
    assert posing.status_code == 403 and "authenticated as alice" in posing.json()["detail"]
    r = client.post(f"/v1/incidents/{inc}/reject", json={"comment": "maintenance"}, headers=alice)
    assert r.status_code == 200 and r.json()["counted"]
    assert [a["approver"] for a in rt.store.approvals_for(inc)] == ["alice"]
    wait_for(lambda: client.get(f"/v1/incidents/{inc}").json()["incident"]["state"] == "needs_attention",
             what="handed over (the alert still fires)")
    assert client.post(f"/v1/incidents/{inc}/approve", json={}, headers=bob).status_code == 409
    assert client.post("/v1/incidents/77/approve", json={}, headers=bob).status_code == 404


def test_metrics_healthz_openapi(api) -> None:
    client, rt = api
    client.post("/v1/signals", json=SIGNAL)
    assert client.get("/healthz").json()["status"] == "ok"
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"heald_signals_received", "heald_incidents", "heald_remedies", "heald_time_to_recover_seconds"} <= set(families)
    received = {s.labels["source"]: s.value for s in families["heald_signals_received"].samples if s.name.endswith("_total")}
    assert received == {"my-monitor": 1.0}
    states = {s.labels["state"]: s.value for s in families["heald_incidents"].samples}
    assert sum(states.values()) == 1 and set(states) >= {"observing", "resolved", "escalated"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/signals", "/v1/incidents", "/v1/incidents/{incident_id}", "/v1/incidents/{incident_id}/approve",
            "/v1/incidents/{incident_id}/reject", "/healthz", "/metrics"} <= set(spec["paths"])
