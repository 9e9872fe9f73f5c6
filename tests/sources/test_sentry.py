"""The Sentry webhook source on Sentry's documented payloads (an issue alert from
getsentry/integration-platform-example, the metric alert example of docs.sentry.io); its
signature checked against OpenSSL's HMAC (Sentry publishes no test vector)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from heald.models import Severity, SignalStatus
from heald.sources import SourceError, SourceIgnored
from heald.sources.sentry import SentrySource, signature, verify_signature
from tests.conftest import CORPUS

ISSUE_ALERT = (CORPUS / "sentry" / "mocks.MOCK_EVENT_ALERT_TRIGGERED_WEBHOOK.json").read_bytes()
METRIC_ALERT = (Path(__file__).parent / "vendor" / "sentry.metric_alert.resolved.json").read_bytes()
SENTRY = SentrySource()
SECRET = "a-sentry-client-secret-0123456789"


def hook(resource: str, **more: str) -> dict[str, str]:
    return {"Sentry-Hook-Resource": resource, "Request-ID": "r-1", **more}


def test_the_signature_is_the_hmac_openssl_computes() -> None:
    out = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", SECRET, "-hex"], input=ISSUE_ALERT,
                         capture_output=True, check=True).stdout.decode()
    expected = out.strip().rsplit(" ", 1)[-1]
    assert signature(SECRET, ISSUE_ALERT) == expected
    assert verify_signature({"Sentry-Hook-Signature": expected}, ISSUE_ALERT, SECRET)
    assert SENTRY.verify({"sentry-hook-signature": expected}, ISSUE_ALERT, SECRET)
    assert not verify_signature({"Sentry-Hook-Signature": expected}, ISSUE_ALERT, "another-secret-0123456789")
    assert not verify_signature({"Sentry-Hook-Signature": expected}, ISSUE_ALERT + b"\n", SECRET)
    assert not verify_signature({}, ISSUE_ALERT, SECRET)
    assert not verify_signature({"Sentry-Hook-Signature": ""}, ISSUE_ALERT, SECRET)


def test_an_issue_alert_fires_for_its_issue() -> None:
    [sig] = SENTRY.parse(hook("event_alert"), ISSUE_ALERT)
    assert sig.source == "sentry" and sig.status == SignalStatus.firing and sig.severity == Severity.error
    assert sig.summary == "Error #1: This is a test error!"
    assert sig.labels == {"alertname": "SentryIssue", "issue_id": "123", "environment": "production"}
    assert sig.annotations["web_url"] == "https://sentry.io/organizations/lxyz/issues/123/events/def456/"
    assert sig.annotations["culprit"] == "SentryCustomError(frontend/src/util)"
    assert SENTRY.delivery_id(hook("event_alert")) == "r-1"
    # the issue resolved in Sentry resolves it
    resolved = json.dumps({"action": "resolved", "data": {"issue": {"id": "123", "title": "Error #1"}}}).encode()
    [res] = SENTRY.parse(hook("issue"), resolved)
    assert res.status == SignalStatus.resolved and res.fingerprint == sig.fingerprint


def test_the_documented_metric_alert_resolves_what_critical_fired() -> None:
    [resolved] = SENTRY.parse(hook("metric_alert"), METRIC_ALERT)
    assert resolved.status == SignalStatus.resolved and resolved.service == "bar"
    assert resolved.labels == {"alertname": "Too many errors", "alert_rule_id": "7", "project": "bar"}
    assert resolved.summary == "Resolved: Too many errors"
    assert resolved.annotations["query"] == "level:error" and resolved.annotations["aggregate"] == "count()"
    critical = json.loads(METRIC_ALERT)
    critical["action"] = "critical"
    critical["data"]["description_title"] = "Critical: Too many errors"
    [fired] = SENTRY.parse(hook("metric_alert"), json.dumps(critical).encode())
    assert fired.status == SignalStatus.firing and fired.severity == Severity.critical
    assert fired.fingerprint == resolved.fingerprint
    critical["action"] = "warning"
    [warned] = SENTRY.parse(hook("metric_alert"), json.dumps(critical).encode())
    assert warned.severity == Severity.warning and warned.status == SignalStatus.firing


def test_other_resources_are_ignored_with_the_reason() -> None:
    with pytest.raises(SourceIgnored, match="installation"):
        SENTRY.parse(hook("installation"), json.dumps({"action": "created", "data": {}}).encode())
    with pytest.raises(SourceIgnored, match="assigned"):
        SENTRY.parse(hook("issue"), json.dumps({"action": "assigned", "data": {}}).encode())


@pytest.mark.parametrize(("headers", "body", "field"), [
    ({}, ISSUE_ALERT, "headers.Sentry-Hook-Resource"),
    (hook("event_alert"), b"[1]", "(body)"),
    (hook("event_alert"), json.dumps({"data": {}}).encode(), "action"),
    (hook("event_alert"), json.dumps({"action": "triggered", "data": {}}).encode(), "data.event"),
    (hook("event_alert"), json.dumps({"action": "triggered", "data": {"event": {"title": "x"}}}).encode(),
     "data.event.issue_id"),
    (hook("metric_alert"), json.dumps({"action": "exploded", "data": {}}).encode(), "action"),
    (hook("metric_alert"), json.dumps({"action": "critical", "data": {"metric_alert": {}}}).encode(),
     "data.metric_alert.alert_rule"),
    (hook("metric_alert"), METRIC_ALERT.replace(b'"projects": ["bar"],\n        "query"', b'"projects": "bar",\n        "query"'),
     "data.metric_alert.alert_rule.projects"),
])
def test_malformed_payloads_name_the_field(headers: dict[str, str], body: bytes, field: str) -> None:
    with pytest.raises(SourceError) as exc:
        SENTRY.parse(headers, body)
    assert exc.value.field == field, str(exc.value)
