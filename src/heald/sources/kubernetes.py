"""The Kubernetes events source: Event objects as event exporters post them (e.g.
kubernetes-event-exporter's ``webhook`` receiver, which POSTs each event as JSON), served at
``POST /v1/webhooks/kubernetes``.

Formats (kubernetes.io API reference): ``core/v1`` Event — ``type``, ``reason``,
``message``, ``involvedObject`` (``kind``, ``namespace``, ``name``, ``uid``, ``fieldPath``,
plus ``labels`` where the exporter adds them), ``source`` (``component``, ``host``),
``count``, ``firstTimestamp``, ``lastTimestamp``, ``eventTime``, ``metadata`` — and
``events.k8s.io/v1`` Event — ``type``, ``reason``, ``note``, ``regarding``,
``reportingController``, ``eventTime``, ``series``, ``deprecatedFirstTimestamp``, … A body is
one Event, a JSON array of them, or an ``EventList`` (``items``).

Only ``Warning`` events become signals (``kind`` "k8s_event", ``alertname`` its reason); a
``Normal`` event is counted in ``heald_kubernetes_normal_events_total`` and nothing else. The
fingerprint is the involved object (namespace, kind, name) and the reason, so the repeats of
one event (``count``, ``series``) update one incident. ``service`` is the object's
``app.kubernetes.io/name`` or ``app`` label when the exporter sends labels, else its name.
Kubernetes events do not resolve. The exporter sends no signature: configure its webhook
``headers`` with ``X-Heald-Webhook-Secret`` (or a bearer token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter

from heald.models import Severity, Signal
from heald.sources._common import fingerprint, obj, text, timestamp
from heald.sources.base import SOURCE_METRICS, SourceError, SourceIgnored, load_json, make_signal, register_source

NORMAL_EVENTS = Counter("heald_kubernetes_normal_events", "Kubernetes Normal events received and counted, "
                        "not turned into signals", registry=None)
SOURCE_METRICS.append(NORMAL_EVENTS)

#: Warning reasons that mean something is down rather than degraded.
ERROR_REASONS = frozenset({"BackOff", "CrashLoopBackOff", "Failed", "FailedMount", "FailedAttachVolume",
                           "OOMKilling", "Evicted", "FailedScheduling", "Unhealthy", "NodeNotReady",
                           "FailedCreatePodSandBox", "ErrImagePull", "ImagePullBackOff"})
SERVICE_LABELS = ("app.kubernetes.io/name", "app", "k8s-app")


def _events(data: Any) -> list[tuple[str, Any]]:
    """The events of a body, each with the path prefix of its fields."""
    if isinstance(data, list):
        return [(f"[{i}].", e) for i, e in enumerate(data)]
    if isinstance(data, dict) and data.get("kind") == "EventList":
        items = data.get("items")
        if not isinstance(items, list):
            raise SourceError("items", "a list of Events (an EventList)", type(items).__name__)
        return [(f"items.{i}.", e) for i, e in enumerate(items)]
    return [("", data)]


def event_signal(event: Any, where: str = "") -> Signal | None:
    """The signal of one Warning event, None for a Normal one. Raises SourceError naming the
    field (prefixed with ``where``)."""
    if not isinstance(event, dict):
        raise SourceError(where.rstrip(".") or "(body)", "a Kubernetes Event as a JSON object", type(event).__name__)
    if event.get("kind") not in (None, "Event"):
        raise SourceError(f"{where}kind", '"Event"', event.get("kind"))
    kind = text(event.get("type"), f"{where}type", 20)
    if kind == "Normal":
        return None
    if kind != "Warning":
        raise SourceError(f"{where}type", '"Warning" or "Normal" (a Kubernetes Event type)', kind or None)
    v1 = str(event.get("apiVersion", "")).startswith("events.k8s.io/")
    obj_key = "regarding" if v1 or "regarding" in event else "involvedObject"
    involved = obj(event.get(obj_key), f"{where}{obj_key}")
    if not involved:
        raise SourceError(f"{where}{obj_key}", "the object the event is about (kind, namespace, name)")
    reason = text(event.get("reason"), f"{where}reason", 128, required=True)
    o_kind = text(involved.get("kind"), f"{where}{obj_key}.kind", 100, required=True)
    o_name = text(involved.get("name"), f"{where}{obj_key}.name", 253, required=True)
    meta = obj(event.get("metadata"), f"{where}metadata")
    namespace = (text(involved.get("namespace"), f"{where}{obj_key}.namespace", 63)
                 or text(meta.get("namespace"), f"{where}metadata.namespace", 63))
    note_key = "note" if "note" in event else "message"
    message = text(event.get(note_key), f"{where}{note_key}", 8000)
    source = obj(event.get("deprecatedSource") if v1 else event.get("source"), f"{where}source")
    controller = (text(event.get("reportingController"), f"{where}reportingController")
                  or text(source.get("component"), f"{where}source.component"))
    host = text(source.get("host"), f"{where}source.host", 253)
    obj_labels = involved.get("labels")
    obj_labels = obj_labels if isinstance(obj_labels, dict) else {}
    service = next((str(obj_labels[k])[:200] for k in SERVICE_LABELS if isinstance(obj_labels.get(k), str)
                    and obj_labels[k]), None) or o_name[:200]
    labels = {"alertname": reason, "namespace": namespace, "object_kind": o_kind, "object": o_name}
    if controller:
        labels["reporting_controller"] = controller
    series = obj(event.get("series"), f"{where}series")
    count = event.get("count", event.get("deprecatedCount", series.get("count")))
    notes = {"message": message, "field_path": text(involved.get("fieldPath"), f"{where}{obj_key}.fieldPath", 500),
             "host": host, "object_uid": text(involved.get("uid"), f"{where}{obj_key}.uid"),
             "event": text(meta.get("name"), f"{where}metadata.name", 253),
             "count": str(count) if isinstance(count, int) and not isinstance(count, bool) else ""}
    first = (timestamp(event.get("firstTimestamp"), f"{where}firstTimestamp")
             or timestamp(event.get("deprecatedFirstTimestamp"), f"{where}deprecatedFirstTimestamp")
             or timestamp(event.get("eventTime"), f"{where}eventTime")
             or timestamp(meta.get("creationTimestamp"), f"{where}metadata.creationTimestamp"))
    where_text = f"{o_kind} {namespace + '/' if namespace else ''}{o_name}"
    return make_signal(where, source="kubernetes", kind="k8s_event", service=service,
                       severity=Severity.error if reason in ERROR_REASONS else Severity.warning,
                       summary=f"{reason} on {where_text}: {message}"[:10_000], labels=labels,
                       annotations={k: v for k, v in notes.items() if v},
                       fingerprint=fingerprint("kubernetes", namespace, o_kind, o_name, reason), starts_at=first)


class KubernetesEventsSource:
    """Parses Kubernetes Event objects (see the module docstring)."""

    name = "kubernetes"

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal per Warning event. Raises SourceIgnored when every event is Normal (they
        are counted), SourceError naming the field for a body that is not Events."""
        data = load_json(body, "a Kubernetes Event (or a list of them) in JSON")
        events = _events(data)
        if not events:
            raise SourceIgnored("no events: nothing to do")
        results = [event_signal(e, where) for where, e in events]
        signals = [s for s in results if s is not None]
        NORMAL_EVENTS.inc(len(results) - len(signals))  # counted once the whole body is valid
        if not signals:
            raise SourceIgnored(f"{len(events)} Normal event{'s' if len(events) > 1 else ''}: counted in "
                                f"heald_kubernetes_normal_events_total, not healed")
        return signals


register_source(KubernetesEventsSource())
