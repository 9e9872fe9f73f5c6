"""The CloudEvents 1.0 source: the spec's own example, binary and batched mode, and malformed
events."""

from __future__ import annotations

import json

import pytest

from heald.models import Severity, SignalStatus
from heald.sources import WEBHOOK_SOURCES, SourceError, SourceIgnored
from tests.conftest import CORPUS

CE = WEBHOOK_SOURCES["cloudevents"]
STRUCTURED = {"content-type": "application/cloudevents+json"}


def test_the_specs_structured_example() -> None:
    body = (CORPUS / "cloudevents" / "json-format.example-1.json").read_bytes()
    [sig] = CE.parse(STRUCTURED, body)
    assert sig.source == "cloudevents" and sig.kind == "com.example.someevent"
    assert sig.labels == {"alertname": "com.example.someevent", "ce_source": "/mycontext",
                          "ce_type": "com.example.someevent"}
    assert sig.annotations["ce_id"] == "A234-1234-1234"
    assert sig.annotations["ce_comexampleextension1"] == "value" and sig.annotations["ce_comexampleothervalue"] == "5"
    assert sig.starts_at is not None and sig.starts_at.year == 2018
    assert sig.annotations["data"].startswith("(binary")


def event(**kw: object) -> dict[str, object]:
    return {"specversion": "1.0", "id": "e-1", "source": "/payments/gateway", "type": "com.example.payment.failed",
            "time": "2025-01-02T03:04:05Z", "subject": "checkout", **kw}


def test_data_fields_give_service_severity_labels_and_status() -> None:
    data = {"service": "payments", "severity": "critical", "summary": "gateway timeouts",
            "labels": {"region": "eu-1"}}
    [fired] = CE.parse(STRUCTURED, json.dumps(event(data=data)).encode())
    assert fired.service == "payments" and fired.severity == Severity.critical and fired.summary == "gateway timeouts"
    assert fired.labels["region"] == "eu-1" and fired.labels["ce_subject"] == "checkout"
    assert fired.status == SignalStatus.firing
    [resolved] = CE.parse(STRUCTURED, json.dumps(event(id="e-2", data={**data, "status": "resolved"})).encode())
    assert resolved.status == SignalStatus.resolved
    assert resolved.labels == fired.labels  # same source, type and subject: the same fingerprint


def test_binary_mode_reads_ce_headers() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": "%2Fpayments", "ce-type": "com.example.down",
               "ce-service": "payments", "content-type": "application/json"}
    [sig] = CE.parse(headers, json.dumps({"summary": "payments is down"}).encode())
    assert sig.labels["ce_source"] == "/payments" and sig.service == "payments" and sig.summary == "payments is down"
    with pytest.raises(SourceError, match="JSON data"):
        CE.parse(headers, b"{broken")


def test_batched_mode() -> None:
    body = json.dumps([event(id="1"), event(id="2", subject="refund")]).encode()
    sigs = CE.parse({"content-type": "application/cloudevents-batch+json"}, body)
    assert [s.labels["ce_subject"] for s in sigs] == ["checkout", "refund"]
    with pytest.raises(SourceError) as exc:
        CE.parse({"content-type": "application/cloudevents-batch+json"}, json.dumps([event(), {"id": "x"}]).encode())
    assert exc.value.field == "[1].specversion"


@pytest.mark.parametrize(("ev", "field", "expected"), [
    (event(specversion="0.3"), "specversion", '"1.0"'),
    ({k: v for k, v in event().items() if k != "id"}, "id", "required"),
    (event(source=""), "source", "non-empty string"),
    (event(time="last tuesday"), "time", "RFC 3339"),
    (event(Bad_Name="x"), "Bad_Name", "lowercase"),
    (event(data={}, data_base64="AA=="), "data_base64", "exclude each other"),
    (event(ext={"nested": 1}), "ext", "string, integer or boolean"),
])
def test_malformed_events_name_the_attribute(ev: dict[str, object], field: str, expected: str) -> None:
    with pytest.raises(SourceError) as exc:
        CE.parse(STRUCTURED, json.dumps(ev).encode())
    assert exc.value.field == field and expected in str(exc.value)


def test_not_json_and_not_binary() -> None:
    with pytest.raises(SourceError, match="ce-\\* headers"):
        CE.parse({"content-type": "text/plain"}, b"hello")


def test_null_attributes_are_unset() -> None:
    """The JSON format: an attribute whose value is null MUST be treated as absent."""
    body = json.dumps(event(subject=None, time=None, dataschema=None, datacontenttype=None, severity=None))
    [sig] = CE.parse(STRUCTURED, body.encode())
    assert "ce_subject" not in sig.labels and "ce_severity" not in sig.annotations
    assert sig.starts_at is None  # received-at is used
    both = json.dumps(event(data=None, data_base64="aGVsbG8="))  # data null: unset, no conflict
    [sig] = CE.parse(STRUCTURED, both.encode())
    assert "base64" in sig.annotations["data"]
    required_null = json.dumps(event(id=None))
    with pytest.raises(SourceError) as exc:
        CE.parse(STRUCTURED, required_null.encode())
    assert exc.value.field == "id"  # unset, so missing: still refused


def test_an_empty_batch_is_a_valid_no_op() -> None:
    with pytest.raises(SourceIgnored, match="empty batch"):
        CE.parse({"content-type": "application/cloudevents-batch+json"}, b"[]")
    with pytest.raises(SourceError) as exc:
        CE.parse({"content-type": "application/cloudevents-batch+json"}, b'{"specversion": "1.0"}')
    assert "JSON array" in str(exc.value)
