"""The CloudEvents source: CloudEvents 1.0 over HTTP, served at ``POST /v1/webhooks/cloudevents``.

Formats (cloudevents/spec ``cloudevents/spec.md``, ``formats/json-format.md``,
``bindings/http-protocol-binding.md``):
- structured mode: ``Content-Type: application/cloudevents+json`` (or ``application/json``
  with ``specversion`` in the body), one event as a JSON object;
- batched mode: ``Content-Type: application/cloudevents-batch+json``, a JSON array of events;
- binary mode: the attributes in ``ce-*`` headers (values percent-encoded), the body is the
  event's ``data`` with the ``Content-Type`` as its ``datacontenttype``.

Required attributes ``specversion`` ("1.0"), ``id``, ``source``, ``type``; ``time`` is RFC 3339;
attribute names are lowercase letters and digits; ``data`` and ``data_base64`` exclude each
other; an attribute (or ``data``) whose JSON value is ``null`` is unset, as the JSON format
requires; an empty batch is valid and does nothing (202 with the reason). An event becomes one signal (``kind`` = its
type): ``service``, ``severity`` and
``status`` come from extension attributes of those names or the same keys of a JSON ``data``
object (``status`` "resolved" or "ok" resolves); ``data.labels`` (strings) join the labels
``alertname`` (``data.alertname`` or the type), ``ce_source``, ``ce_type``, ``ce_subject``, so
the fingerprint is per source, type and subject, not per event id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from pydantic import TypeAdapter, ValidationError

from heald.models import Severity, Signal, SignalStatus
from heald.sources.alertmanager import SEVERITIES
from heald.sources.base import SourceError, SourceIgnored, WebhookSource, load_json, make_signal, register_source

REQUIRED = ("specversion", "id", "source", "type")
_NAME = re.compile(r"^[a-z0-9]{1,64}$")
_RESOLVED = {"resolved", "ok", "closed", "recovered"}
_TIME = TypeAdapter(datetime)


def _event_from_headers(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """A binary-mode event: ``ce-*`` headers plus the body as data."""
    event: dict[str, Any] = {}
    for key, value in headers.items():
        k = key.lower()
        if k.startswith("ce-"):
            event[k[3:]] = unquote(value)
    ctype = headers.get("content-type", "")
    if ctype:
        event["datacontenttype"] = ctype
    if body:
        if ctype.split(";")[0].strip().endswith(("/json", "+json")):
            event["data"] = load_json(body, f"JSON data, as the Content-Type {ctype[:100]!r} says")
        else:
            try:
                event["data"] = body.decode()
            except UnicodeDecodeError:
                event["data_base64"] = "(binary)"
    return event


def validate_event(event: object, where: str = "") -> dict[str, Any]:
    """Check one event's attributes (see the module docstring). Raises SourceError naming the
    attribute. Returns the event without its null (unset) attributes."""
    if not isinstance(event, dict):
        raise SourceError(where or "(body)", "a CloudEvent as a JSON object", type(event).__name__)
    # the JSON format: an attribute whose value is null is unset ("MUST be treated as if absent")
    event = {name: value for name, value in event.items() if value is not None}
    for attr in REQUIRED:
        value = event.get(attr)
        if not isinstance(value, str) or not value:
            raise SourceError(f"{where}{attr}", "a non-empty string (a required CloudEvents attribute)",
                              value if value is not None else None)
    if event["specversion"] != "1.0":
        raise SourceError(f"{where}specversion", '"1.0" (the CloudEvents version heald reads)', event["specversion"])
    for name in event:
        if name not in ("data", "data_base64") and not _NAME.match(name):
            raise SourceError(f"{where}{name}", "an attribute name of lowercase letters a-z and digits 0-9")
    if "data" in event and "data_base64" in event:
        raise SourceError(f"{where}data_base64", "no value when 'data' is present (they exclude each other)")
    for attr in ("subject", "datacontenttype", "dataschema"):
        if attr in event and (not isinstance(event[attr], str) or not event[attr]):
            raise SourceError(f"{where}{attr}", "a non-empty string", event[attr])
    if "time" in event:
        try:
            _TIME.validate_python(event["time"])
        except ValidationError as exc:
            raise SourceError(f"{where}time", "an RFC 3339 timestamp", event["time"]) from exc
    for name, value in event.items():
        if name not in (*REQUIRED, "data", "data_base64") and not isinstance(value, (str, int, bool)):
            raise SourceError(f"{where}{name}", "a string, integer or boolean (a CloudEvents attribute value)",
                              type(value).__name__)
    return event


def event_signal(event: dict[str, Any], where: str = "") -> Signal:
    """The signal of one validated event (see the module docstring); ``where`` prefixes the
    field named by a SourceError (``[2].``)."""
    data = event.get("data")
    fields = data if isinstance(data, dict) else {}

    def pick(name: str) -> str | None:
        value = event.get(name, fields.get(name))
        return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) else None

    labels = {str(k): v for k, v in (fields.get("labels") or {}).items() if isinstance(v, str)} \
        if isinstance(fields.get("labels"), dict) else {}
    labels.update({"alertname": str(fields.get("alertname") or event["type"])[:200], "ce_source": event["source"],
                   "ce_type": event["type"]})
    if event.get("subject"):
        labels["ce_subject"] = event["subject"]
    service = pick("service")
    if service:
        labels.setdefault("service", service)
    annotations = {"ce_id": event["id"]}
    for name, value in event.items():
        if name not in (*REQUIRED, "data", "data_base64", "subject", "time") and isinstance(value, (str, int, bool)):
            annotations[f"ce_{name}"] = str(value)
    summary = next((str(fields[k]) for k in ("summary", "message", "description", "title") if fields.get(k)), "")
    if data is not None:
        annotations["data"] = (data if isinstance(data, str) else json.dumps(data, sort_keys=True))[:4000]
    elif "data_base64" in event:
        annotations["data"] = f"(binary, {len(str(event['data_base64']))} base64 characters)"
    status = SignalStatus.resolved if (pick("status") or "").lower() in _RESOLVED else SignalStatus.firing
    return make_signal(where, source="cloudevents", kind=event["type"][:100], service=service[:200] if service else None,
                  status=status, severity=SEVERITIES.get((pick("severity") or "").lower(), Severity.warning),
                  summary=(summary or f"{event['type']} from {event['source']}")[:10_000], labels=labels,
                  annotations=annotations, starts_at=_TIME.validate_python(event["time"]) if "time" in event else None)


class CloudEventsSource(WebhookSource):
    """Parses CloudEvents 1.0 in structured, batched and binary HTTP mode."""

    name = "cloudevents"

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal per event. Raises SourceError naming the attribute and what was expected."""
        lower = {k.lower(): v for k, v in headers.items()}
        if "ce-specversion" in lower:
            return [event_signal(validate_event(_event_from_headers(lower, body)))]
        data = load_json(body, "a CloudEvent in JSON, or ce-* headers for binary mode")
        if lower.get("content-type", "").startswith("application/cloudevents-batch+json") or isinstance(data, list):
            if not isinstance(data, list):
                raise SourceError("(body)", "a JSON array of CloudEvents (batched mode)", type(data).__name__)
            if not data:  # the batched format allows an empty batch: nothing to do
                raise SourceIgnored("an empty batch: no events")
            return [event_signal(validate_event(e, f"[{i}]."), f"[{i}].") for i, e in enumerate(data)]
        return [event_signal(validate_event(data))]


register_source(CloudEventsSource())
