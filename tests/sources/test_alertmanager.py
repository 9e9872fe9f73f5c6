"""The Alertmanager webhook source on real payloads (captured from Prometheus 2.42 +
Alertmanager 0.25, and prometheus-msteams' test data) and on malformed ones."""

from __future__ import annotations

import json

import pytest

from heald.models import Severity, SignalStatus
from heald.sources import WEBHOOK_SOURCES, SourceError
from heald.sources.alertmanager import label_set_fingerprint
from tests.conftest import CORPUS

AM = WEBHOOK_SOURCES["alertmanager"]


def load(name: str) -> bytes:
    return (CORPUS / "alertmanager" / name).read_bytes()


def test_firing_and_resolved_from_a_real_alertmanager() -> None:
    [fired] = AM.parse({}, load("received.json"))
    [resolved] = AM.parse({}, load("received-resolved.json"))
    assert fired.status == SignalStatus.firing and resolved.status == SignalStatus.resolved
    assert fired.fingerprint == resolved.fingerprint == "ecf64cb4acefc704"
    assert fired.labels["alertname"] == "DemoErrorsHigh" and fired.service == "demo"  # from the job label
    assert fired.severity == Severity.critical
    assert fired.summary == "demo_errors_total for trial gw0-0 is 10 (> 5)"
    assert fired.starts_at is not None and fired.starts_at.isoformat().startswith("2026-11-22T01:56:05.915")
    assert fired.ends_at is None  # Go's zero time: not ended
    assert resolved.ends_at is not None and resolved.ends_at > resolved.starts_at
    assert fired.annotations["generator_url"].startswith("http://vm:19090/graph")


def test_our_fingerprint_is_alertmanagers() -> None:
    data = json.loads(load("received.json"))
    labels = data["alerts"][0]["labels"]
    assert label_set_fingerprint(labels) == data["alerts"][0]["fingerprint"]


def test_an_older_sender_without_alert_status_or_fingerprint() -> None:
    [sig] = AM.parse({}, load("prom_post_request.json"))
    assert sig.status == SignalStatus.firing  # from the message's status
    assert sig.fingerprint == label_set_fingerprint(sig.labels)
    assert sig.summary == "Server High Memory usage" and sig.severity == Severity.warning
    assert sig.service == "docker_nodes"


def message(**changes: object) -> bytes:
    data = json.loads(load("received.json"))
    for path, value in changes.items():
        target = data
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return json.dumps(data).encode()


DELETE = object()


@pytest.mark.parametrize(("body", "field", "expected"), [
    (b"{not json", "(body)", "Alertmanager webhook message in JSON"),
    (b"[1, 2]", "(body)", "a JSON object"),
    (message(version="3"), "version", "'4'"),
    (message(version=DELETE), "version", "required"),
    (message(alerts=[]), "alerts", "at least 1 item"),
    (message(status="pending"), "status", "'firing' or 'resolved'"),
    (message(alerts__0__labels={}), "alerts.0.labels", "at least 1 item"),
    (message(alerts__0__labels={"job": "x"}), "alerts.0.labels", "alertname"),
    (message(alerts__0__startsAt="yesterday"), "alerts.0.startsAt", "datetime"),
    (message(alerts__0__startsAt=DELETE), "alerts.0.startsAt", "required"),
    (message(alerts__0__labels={"alertname": 5}), "alerts.0.labels.alertname", "string"),
    (message(alerts__0__fingerprint="not-hex!"), "alerts.0.fingerprint", "pattern"),
])
def test_malformed_messages_name_the_field(body: bytes, field: str, expected: str) -> None:
    with pytest.raises(SourceError) as exc:
        AM.parse({}, body)
    assert exc.value.field == field, str(exc.value)
    assert expected in str(exc.value)
