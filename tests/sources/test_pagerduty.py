"""The PagerDuty V3 webhook source: PagerDuty's own signature test vector (go-pagerduty), its
example incident, and refusals naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heald.models import Severity, SignalStatus
from heald.sources import SourceError, SourceIgnored
from heald.sources.pagerduty import PagerDutySource, signature, verify_signature

VECTOR = json.loads((Path(__file__).parent / "vendor" / "pagerduty.signature-vector.json").read_text())
BODY = VECTOR["body"].encode()
PD = PagerDutySource()


def event(event_type: str, **incident: object) -> bytes:
    """PagerDuty's example body (go-pagerduty's test) as another event type."""
    data = json.loads(BODY)
    data["event"]["event_type"] = event_type
    data["event"]["data"].update(incident)
    return json.dumps(data).encode()


def test_pagerdutys_signature_test_vector() -> None:
    secret = VECTOR["secret"]
    assert signature(secret, BODY) == VECTOR["valid"]
    assert verify_signature({"X-PagerDuty-Signature": VECTOR["valid"]}, BODY, secret)
    assert PD.verify({"x-pagerduty-signature": VECTOR["valid"]}, BODY, secret)  # any case
    assert not verify_signature({"X-PagerDuty-Signature": VECTOR["mismatch"]}, BODY, secret)
    assert not verify_signature({}, BODY, secret)  # the "malformed_header" case
    assert not verify_signature({"X-PagerDuty-Signature": VECTOR["valid"]}, BODY + b" ", secret)
    assert not verify_signature({"X-PagerDuty-Signature": VECTOR["valid"][3:]}, BODY, secret)  # no v1=


def test_several_signatures_while_a_secret_rotates() -> None:
    secret = VECTOR["secret"]
    header = f"{VECTOR['mismatch']},{VECTOR['valid']}"
    assert verify_signature({"X-PagerDuty-Signature": header}, BODY, secret)
    assert verify_signature({"X-PagerDuty-Signature": f"v2=abc, {VECTOR['valid']}"}, BODY, secret)
    assert not verify_signature({"X-PagerDuty-Signature": f"{VECTOR['mismatch']},v2={VECTOR['valid'][3:]}"},
                                BODY, secret)


def test_triggered_fires_and_resolved_resolves_the_same_incident() -> None:
    [fired] = PD.parse({}, event("incident.triggered"))
    assert fired.source == "pagerduty" and fired.status == SignalStatus.firing
    assert fired.summary == "A little bump in the road" and fired.service == "API Service"
    assert fired.labels == {"alertname": "PagerDutyIncident", "pd_incident": "PGR0VU2", "service": "API Service",
                            "urgency": "high", "priority": "P1"}
    assert fired.severity == Severity.critical
    assert fired.annotations["html_url"] == "https://acme.pagerduty.com/incidents/PGR0VU2"
    [resolved] = PD.parse({}, event("incident.resolved", status="resolved"))
    assert resolved.status == SignalStatus.resolved and resolved.fingerprint == fired.fingerprint
    assert resolved.ends_at is not None and resolved.ends_at.isoformat().startswith("2021-04-26T17:36:27.458")


def test_events_heald_does_not_act_on_are_ignored_with_the_reason() -> None:
    with pytest.raises(SourceIgnored, match="incident.priority_updated"):
        PD.parse({}, BODY)  # the vector's own event
    with pytest.raises(SourceIgnored, match="ping"):
        PD.parse({}, json.dumps({"event": {"event_type": "pagey.ping", "data": {}}}).encode())


def test_a_low_urgency_incident_without_priority_is_a_warning() -> None:
    [sig] = PD.parse({}, event("incident.triggered", urgency="low", priority=None))
    assert sig.severity == Severity.warning and "priority" not in sig.labels


@pytest.mark.parametrize(("body", "field"), [
    (b"[]", "(body)"),
    (b"{}", "event"),
    (json.dumps({"event": "x"}).encode(), "event"),
    (json.dumps({"event": {"data": {}}}).encode(), "event.event_type"),
    (event("incident.triggered", id=None), "event.data.id"),
    (event("incident.triggered", service=["API"]), "event.data.service"),
    (event("incident.triggered", title={"a": 1}), "event.data.title"),
    (event("incident.triggered", created_at="last week"), "event.data.created_at"),
])
def test_malformed_payloads_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(SourceError) as exc:
        PD.parse({}, body)
    assert exc.value.field == field, str(exc.value)
