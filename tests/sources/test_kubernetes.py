"""The Kubernetes events source: a real core/v1 Event (knative docs, from a GKE cluster), an
events.k8s.io/v1 Event, Warning events become signals and Normal ones are only counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from heald.models import Severity, SignalStatus
from heald.sources import SourceError, SourceIgnored
from heald.sources.kubernetes import NORMAL_EVENTS, KubernetesEventsSource
from tests.conftest import CORPUS

CORE = json.loads((CORPUS / "kubernetes" / "getting-started.event.json").read_text())
V1 = json.loads((Path(__file__).parent / "vendor" / "kubernetes.events-v1.warning.json").read_text())
K8S = KubernetesEventsSource()


def warning(**changes: object) -> dict[str, object]:
    """The real core/v1 event as the Warning kubelet sends when the container keeps crashing."""
    return {**CORE, "type": "Warning", "reason": "BackOff", "count": 5,
            "message": "Back-off restarting failed container", **changes}


def normal_count() -> float:
    reg = CollectorRegistry()
    reg.register(NORMAL_EVENTS)
    text = generate_latest(reg).decode()
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("heald_kubernetes_normal_events_total ")))


def test_a_normal_event_is_counted_not_a_signal() -> None:
    before = normal_count()
    with pytest.raises(SourceIgnored, match="1 Normal event"):
        K8S.parse({}, json.dumps(CORE).encode())  # "Started container", from a real cluster
    assert normal_count() == before + 1


def test_a_core_v1_warning_is_a_signal_about_its_object() -> None:
    [sig] = K8S.parse({}, json.dumps(warning()).encode())
    assert sig.source == "kubernetes" and sig.kind == "k8s_event" and sig.status == SignalStatus.firing
    assert sig.labels == {"alertname": "BackOff", "namespace": "apiserversource-example", "object_kind": "Pod",
                          "object": "busybox", "reporting_controller": "kubelet"}
    assert sig.service == "busybox" and sig.severity == Severity.error
    assert sig.summary == "BackOff on Pod apiserversource-example/busybox: Back-off restarting failed container"
    assert sig.annotations["field_path"] == "spec.containers{busybox}" and sig.annotations["count"] == "5"
    assert sig.annotations["host"] == "gke-knative-auto-cluster-default-pool-23c23c4f-xdj0"
    assert sig.starts_at is not None and sig.starts_at.isoformat() == "2020-07-28T19:14:54+00:00"
    # a repeat of the event (a higher count) has the same fingerprint; another reason another one
    [again] = K8S.parse({}, json.dumps(warning(count=9)).encode())
    [other] = K8S.parse({}, json.dumps(warning(reason="FailedMount")).encode())
    assert again.fingerprint == sig.fingerprint != other.fingerprint


def test_an_events_k8s_io_v1_warning() -> None:
    [sig] = K8S.parse({}, json.dumps(V1).encode())
    assert sig.labels["alertname"] == "BackOff" and sig.labels["namespace"] == "shop"
    assert sig.labels["object"] == "web-7d4b9c8f6-x2x9q" and sig.annotations["count"] == "27"
    assert sig.annotations["message"].startswith("Back-off restarting failed container web")
    assert sig.starts_at is not None and sig.starts_at.isoformat() == "2024-05-14T09:25:02+00:00"


def test_the_exporters_object_labels_name_the_service() -> None:
    involved = {**CORE["involvedObject"], "labels": {"app.kubernetes.io/name": "checkout", "pod-template-hash": "x"}}
    [sig] = K8S.parse({}, json.dumps(warning(involvedObject=involved)).encode())
    assert sig.service == "checkout"


def test_a_list_keeps_the_warnings_and_counts_the_normals() -> None:
    before = normal_count()
    body = {"kind": "EventList", "apiVersion": "v1", "items": [CORE, warning(), V1, CORE]}
    signals = K8S.parse({}, json.dumps(body).encode())
    assert [s.labels["namespace"] for s in signals] == ["apiserversource-example", "shop"]
    assert normal_count() == before + 2
    assert len(K8S.parse({}, json.dumps([warning(), CORE]).encode())) == 1


def test_a_bad_event_in_a_list_counts_nothing() -> None:
    before = normal_count()
    with pytest.raises(SourceError):
        K8S.parse({}, json.dumps([CORE, warning(type="Critical")]).encode())
    assert normal_count() == before


@pytest.mark.parametrize(("body", "field"), [
    ("x", "(body)"),
    (warning(type="Critical"), "type"),
    (warning(type=None), "type"),
    (warning(kind="Pod"), "kind"),
    (warning(reason=""), "reason"),
    (warning(involvedObject=None), "involvedObject"),
    (warning(involvedObject={"kind": "Pod"}), "involvedObject.name"),
    (warning(firstTimestamp="yesterday"), "firstTimestamp"),
    ({"kind": "EventList", "items": {"a": 1}}, "items"),
    ([warning(), "x"], "[1]"),
    ({**V1, "regarding": ["Pod"]}, "regarding"),
])
def test_malformed_events_name_the_field(body: object, field: str) -> None:
    with pytest.raises(SourceError) as exc:
        K8S.parse({}, json.dumps(body).encode())
    assert exc.value.field == field, str(exc.value)
