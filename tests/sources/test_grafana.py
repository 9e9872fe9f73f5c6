"""The Grafana webhook source on Grafana's documented example payload (version "1"), which the
Alertmanager source refused with a 422 until this source existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heald.models import SignalStatus
from heald.sources import WEBHOOK_SOURCES, SourceError

VENDOR = Path(__file__).parent / "vendor"
EXAMPLE = (VENDOR / "grafana.webhook.json").read_bytes()
GRAFANA = WEBHOOK_SOURCES["grafana"]


def test_grafanas_documented_example_gives_one_signal_per_alert() -> None:
    memory, cpu = GRAFANA.parse({}, EXAMPLE)
    assert memory.source == "grafana" and memory.status == SignalStatus.firing
    assert memory.labels == {"alertname": "High memory usage", "team": "blue", "zone": "us-1"}
    assert memory.fingerprint == "c6eadffa33fcdf37" and cpu.fingerprint == "bc97ff14869b13e3"  # Grafana's own
    assert memory.summary == "This alert was triggered for zone us-1"
    assert memory.starts_at is not None and memory.starts_at.isoformat() == "2021-10-12T07:51:03.157076+00:00"
    assert memory.ends_at is None  # Go's zero time
    assert memory.annotations["values"] == "B=44.2394, C=1"
    assert memory.annotations["silence_url"].startswith("https://play.grafana.org/alerting/silence/new")
    assert memory.annotations["generator_url"] == "https://play.grafana.org/alerting/1afz29v7z/edit"
    assert memory.annotations["grafana_org_id"] == "1"
    assert "dashboard_url" not in memory.annotations  # empty in the example


def test_resolved_finds_the_same_fingerprint() -> None:
    data = json.loads(EXAMPLE)
    data["status"] = "resolved"
    data["alerts"] = data["alerts"][:1]
    data["alerts"][0].update(status="resolved", endsAt="2021-10-12T10:01:03+02:00")
    [sig] = GRAFANA.parse({}, json.dumps(data).encode())
    assert sig.status == SignalStatus.resolved and sig.fingerprint == "c6eadffa33fcdf37"
    assert sig.ends_at is not None and sig.ends_at.hour == 8


def test_the_alertmanager_source_points_a_grafana_message_to_its_endpoint() -> None:
    with pytest.raises(SourceError) as exc:
        WEBHOOK_SOURCES["alertmanager"].parse({}, EXAMPLE)
    assert exc.value.field == "version" and "/v1/webhooks/grafana" in str(exc.value)


@pytest.mark.parametrize(("change", "field"), [
    ({"version": "4"}, "version"),
    ({"alerts": []}, "alerts"),
    ({"orgId": "one"}, "orgId"),
    ({"alerts": [{"labels": {"team": "blue"}, "startsAt": "2021-10-12T09:51:03Z"}]}, "alerts.0.labels"),
    ({"alerts": [{"labels": {"alertname": "A"}, "startsAt": "yesterday"}]}, "alerts.0.startsAt"),
])
def test_malformed_grafana_messages_name_the_field(change: dict[str, object], field: str) -> None:
    data = {**json.loads(EXAMPLE), **change}
    with pytest.raises(SourceError) as exc:
        GRAFANA.parse({}, json.dumps(data).encode())
    assert exc.value.field == field, str(exc.value)
