"""The sources of issue 13 over real HTTP on loopback: each vendor's documented payload is
accepted (202), an unsigned or wrongly signed request is refused (401) before anything is
stored, a signed but malformed one gets a 422 naming the field, and a Kubernetes Normal event
is counted in /metrics, not stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heald.models import IncidentState
from heald.sources.pagerduty import signature as pd_signature
from heald.sources.sentry import signature as sentry_signature
from tests.conftest import CORPUS, wait_for

VENDOR = Path(__file__).parent.parent / "sources" / "vendor"
JSON = {"content-type": "application/json"}
GRAFANA = (VENDOR / "grafana.webhook.json").read_bytes()
PD_VECTOR = json.loads((VENDOR / "pagerduty.signature-vector.json").read_text())
SENTRY_ALERT = (CORPUS / "sentry" / "mocks.MOCK_EVENT_ALERT_TRIGGERED_WEBHOOK.json").read_bytes()
K8S_NORMAL = (CORPUS / "kubernetes" / "getting-started.event.json").read_bytes()
K8S_WARNING = (VENDOR / "kubernetes.events-v1.warning.json").read_bytes()
DATADOG = (CORPUS / "datadog" / "README.example.json").read_bytes()
SECRETS = {"grafana": "grafana-contact-point-secret", "pagerduty": PD_VECTOR["secret"],
           "sentry": "sentry-client-secret-0123456789", "datadog": "datadog-custom-header-secret",
           "kubernetes": "event-exporter-webhook-secret"}


def _start(api_server: Any, **more: Any) -> Any:
    return api_server(token_role=None, webhooks={k: {"secret": v} for k, v in SECRETS.items()}, **more)


def test_grafanas_example_group_opens_one_incident_and_resolved_closes_it(api_server) -> None:
    client, rt = _start(api_server)
    assert client.post("/v1/webhooks/grafana", content=GRAFANA, headers=JSON).status_code == 401
    wrong = client.post("/v1/webhooks/grafana", content=GRAFANA, headers={**JSON, "authorization": "Bearer nope"})
    assert wrong.status_code == 401 and rt.store.count_signals_by_source() == {}
    auth = {**JSON, "authorization": f"Bearer {SECRETS['grafana']}"}  # Grafana's "Authorization header"
    r = client.post("/v1/webhooks/grafana", content=GRAFANA, headers=auth)
    assert r.status_code == 202, r.text
    accepted = r.json()["accepted"]
    # the two alerts of one notification group (groupKey "{}:{}") make one incident
    assert len(accepted) == 2 and [a["opened"] for a in accepted] == [True, False]
    assert accepted[0]["incident_id"] == accepted[1]["incident_id"]
    resolved = json.loads(GRAFANA)
    resolved["status"] = "resolved"
    for alert in resolved["alerts"]:
        alert.update(status="resolved", endsAt="2021-10-12T10:10:00+02:00")
    r = client.post("/v1/webhooks/grafana", content=json.dumps(resolved).encode(), headers=auth)
    assert [a["incident_id"] for a in r.json()["accepted"]] == [a["incident_id"] for a in accepted]
    for a in accepted:
        inc = wait_for(lambda a=a: (i := rt.store.get_incident(a["incident_id"])).state.terminal and i,
                       what="the Grafana incident to close")
        assert inc.state == IncidentState.resolved
    bad = client.post("/v1/webhooks/grafana", content=GRAFANA.replace(b'"version": "1"', b'"version": "9"'),
                      headers=auth)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "version"]


def test_pagerduty_signed_with_its_vector_secret_and_refused_unsigned(api_server) -> None:
    client, rt = _start(api_server)
    body = PD_VECTOR["body"].encode()
    r = client.post("/v1/webhooks/pagerduty", content=body, headers={**JSON, "X-PagerDuty-Signature": PD_VECTOR["valid"]})
    assert r.status_code == 202 and r.json()["ignored"] and "priority_updated" in r.json()["reason"]
    triggered = body.replace(b"incident.priority_updated", b"incident.triggered")
    for headers in ({}, {"X-PagerDuty-Signature": PD_VECTOR["valid"]},  # the signature of another body
                    {"X-PagerDuty-Signature": PD_VECTOR["mismatch"]},
                    {"authorization": f"Bearer {SECRETS['pagerduty']}"}):  # a signing source wants its signature
        r = client.post("/v1/webhooks/pagerduty", content=triggered, headers={**JSON, **headers})
        assert r.status_code == 401 and "signature" in r.json()["detail"], headers
    assert rt.store.count_signals_by_source() == {}
    sig = f"{PD_VECTOR['mismatch']},{pd_signature(SECRETS['pagerduty'], triggered)}"  # rotation: one matches
    r = client.post("/v1/webhooks/pagerduty", content=triggered, headers={**JSON, "X-PagerDuty-Signature": sig})
    assert r.status_code == 202 and r.json()["accepted"][0]["opened"]
    malformed = triggered.replace(b'"id":"PGR0VU2"', b'"id":["PGR0VU2"]')
    r = client.post("/v1/webhooks/pagerduty", content=malformed,
                    headers={**JSON, "X-PagerDuty-Signature": pd_signature(SECRETS["pagerduty"], malformed)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "event", "data", "id"]


def test_sentry_signed_alert_is_accepted_once(api_server) -> None:
    client, rt = _start(api_server)
    headers = {**JSON, "Sentry-Hook-Resource": "event_alert", "Request-ID": "5ab3c1f0"}
    r = client.post("/v1/webhooks/sentry", content=SENTRY_ALERT, headers=headers)
    assert r.status_code == 401 and rt.store.count_signals_by_source() == {}
    signed = {**headers, "Sentry-Hook-Signature": sentry_signature(SECRETS["sentry"], SENTRY_ALERT)}
    r = client.post("/v1/webhooks/sentry", content=SENTRY_ALERT, headers=signed)
    assert r.status_code == 202 and r.json()["accepted"][0]["opened"], r.text
    again = client.post("/v1/webhooks/sentry", content=SENTRY_ALERT, headers=signed)
    assert again.json()["duplicate"] is True  # the same Request-ID
    no_resource = {k: v for k, v in signed.items() if k != "Sentry-Hook-Resource"}
    r = client.post("/v1/webhooks/sentry", content=SENTRY_ALERT, headers=no_resource)
    assert r.status_code == 422 and "Sentry-Hook-Resource" in r.text


def test_datadog_needs_its_secret_header(api_server) -> None:
    client, rt = _start(api_server)
    assert client.post("/v1/webhooks/datadog", content=DATADOG, headers=JSON).status_code == 401
    r = client.post("/v1/webhooks/datadog", content=DATADOG,
                    headers={**JSON, "X-Heald-Webhook-Secret": SECRETS["datadog"]})
    assert r.status_code == 202 and r.json()["accepted"][0]["opened"], r.text
    [sig] = rt.store.signals_for(r.json()["accepted"][0]["incident_id"])
    assert sig.source == "datadog" and sig.labels["alertname"] == "[TEST] Host Cluster Alert"


def test_kubernetes_normal_events_are_counted_warnings_heal(api_server) -> None:
    client, rt = _start(api_server, api={"max_signals_per_message": 3})
    auth = {**JSON, "X-Heald-Webhook-Secret": SECRETS["kubernetes"]}

    def counted() -> float:
        text = client.get("/metrics").text
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("heald_kubernetes_normal_events_total ")))

    before = counted()
    assert client.post("/v1/webhooks/kubernetes", content=K8S_NORMAL, headers=JSON).status_code == 401
    assert counted() == before  # a stranger cannot move the counter
    r = client.post("/v1/webhooks/kubernetes", content=K8S_NORMAL, headers=auth)
    assert r.status_code == 202 and r.json()["ignored"] and "Normal" in r.json()["reason"]
    assert counted() == before + 1 and rt.store.count_signals_by_source() == {}
    r = client.post("/v1/webhooks/kubernetes", content=K8S_WARNING, headers=auth)
    assert r.status_code == 202 and r.json()["accepted"][0]["opened"]
    many = json.dumps([json.loads(K8S_WARNING)] * 4).encode()
    r = client.post("/v1/webhooks/kubernetes", content=many, headers=auth)
    assert r.status_code == 413 and "api.max_signals_per_message" in r.text
    r = client.post("/v1/webhooks/kubernetes", content=b'{"type": "Warning"}', headers=auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "involvedObject"]
