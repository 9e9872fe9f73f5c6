"""The Datadog webhook source: Datadog's default body (a real notification, from
relay-integrations/datadog) and the template documented in docs/sources.md."""

from __future__ import annotations

import json

import pytest

from heald.models import Severity, SignalStatus
from heald.sources import SourceError, SourceIgnored
from heald.sources.datadog import DatadogSource
from tests.conftest import CORPUS

DEFAULT = json.loads((CORPUS / "datadog" / "README.example.json").read_text())
DD = DatadogSource()
#: The template of docs/sources.md as Datadog fills it in.
TEMPLATE = {"id": "7309873129853486512", "title": "[Triggered on {host:web-1}] Checkout 5xx ratio high",
            "body": "%%%\n5xx ratio above 5% for 2 minutes\n%%%", "last_updated": "1716800000000",
            "event_type": "query_alert_monitor", "date": "1716800000000", "org": {"id": "11", "name": "Acme"},
            "alert_id": "18692904", "alert_transition": "Triggered", "alert_type": "error", "alert_priority": "P1",
            "alert_scope": "host:web-1", "alert_query": "sum(last_2m):sum:trace.http.request.errors{*} > 5",
            "alert_title": "Checkout 5xx ratio high", "hostname": "web-1", "tags": "env:prod,service:checkout,team:a",
            "link": "https://app.datadoghq.com/event/event?id=7309873129853486512", "aggreg_key": "a1b2"}


def test_datadogs_default_body_fires_from_its_title() -> None:
    [sig] = DD.parse({}, json.dumps(DEFAULT).encode())
    assert sig.source == "datadog" and sig.status == SignalStatus.firing
    assert sig.labels == {"alertname": "[TEST] Host Cluster Alert"}
    assert sig.summary == "[Triggered] [TEST] Host Cluster Alert"
    assert sig.annotations["event_type"] == "service_check" and "Monitor Status" in sig.annotations["body"]
    assert sig.starts_at is not None and sig.starts_at.isoformat() == "2020-06-03T20:43:05+00:00"
    recovered = {**DEFAULT, "title": "[Recovered] [TEST] Host Cluster Alert", "id": "5485379890863845240"}
    [res] = DD.parse({}, json.dumps(recovered).encode())
    assert res.status == SignalStatus.resolved and res.fingerprint == sig.fingerprint


def test_the_documented_template_names_monitor_scope_and_service() -> None:
    [sig] = DD.parse({}, json.dumps(TEMPLATE).encode())
    assert sig.service == "checkout" and sig.severity == Severity.critical  # P1
    assert sig.labels == {"alertname": "Checkout 5xx ratio high", "monitor_id": "18692904", "scope": "host:web-1",
                          "service": "checkout", "env": "prod", "host": "web-1"}
    assert sig.annotations["query"].startswith("sum(last_2m)")
    recovered = {**TEMPLATE, "alert_transition": "Recovered", "title": "[Recovered on {host:web-1}] Checkout 5xx",
                 "alert_type": "success", "id": "1"}
    [res] = DD.parse({}, json.dumps(recovered).encode())
    assert res.status == SignalStatus.resolved and res.fingerprint == sig.fingerprint
    other_host = {**TEMPLATE, "alert_scope": "host:web-2"}
    assert DD.parse({}, json.dumps(other_host).encode())[0].fingerprint != sig.fingerprint


def test_a_transition_that_is_neither_trigger_nor_recovery_is_ignored() -> None:
    with pytest.raises(SourceIgnored, match="muted"):
        DD.parse({}, json.dumps({**TEMPLATE, "alert_transition": "Muted"}).encode())


@pytest.mark.parametrize(("body", "field"), [
    ([DEFAULT], "(body)"),
    ({**DEFAULT, "title": ""}, "title"),
    ({**DEFAULT, "title": "Host Cluster Alert"}, "alert_transition"),
    ({**TEMPLATE, "tags": ["env:prod"]}, "tags"),
    ({**TEMPLATE, "alert_id": {"id": 1}}, "alert_id"),
])
def test_malformed_bodies_name_the_field(body: object, field: str) -> None:
    with pytest.raises(SourceError) as exc:
        DD.parse({}, json.dumps(body).encode())
    assert exc.value.field == field, str(exc.value)


def test_a_multi_alert_title_without_the_template_fields_keeps_groups_apart() -> None:
    web1 = {**DEFAULT, "title": "[Triggered on {host:web-1}] Disk full"}
    web2 = {**DEFAULT, "title": "[Triggered on {host:web-2}] Disk full"}
    back = {**DEFAULT, "title": "[Recovered on {host:web-1}] Disk full"}
    [a], [b], [c] = (DD.parse({}, json.dumps(x).encode()) for x in (web1, web2, back))
    assert a.labels["alertname"] == "Disk full" and a.status == SignalStatus.firing
    assert a.fingerprint != b.fingerprint and c.fingerprint == a.fingerprint and c.status == SignalStatus.resolved


def test_a_date_beyond_what_datetime_holds_is_no_date() -> None:
    [sig] = DD.parse({}, json.dumps({**TEMPLATE, "date": "999999999999999", "last_updated": "x"}).encode())
    assert sig.starts_at is None
