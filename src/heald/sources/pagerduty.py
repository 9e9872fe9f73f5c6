"""The PagerDuty source: PagerDuty's V3 webhooks (webhook subscriptions), served at
``POST /v1/webhooks/pagerduty``.

Format (developer.pagerduty.com, "V3 Webhooks overview" and "Verifying signatures"): the body
is ``{"event": {"id", "event_type", "resource_type", "occurred_at", "agent", "client",
"data"}}``; for ``resource_type`` "incident", ``data`` is the incident (``id``, ``number``,
``title``, ``status``, ``urgency``, ``html_url``, ``incident_key``, ``service``, ``priority``,
…). PagerDuty signs each delivery with the subscription's secret:
``X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>``, several comma-separated while
a secret is being rotated; any one matching is enough.

``incident.triggered``, ``incident.reopened``, ``incident.escalated`` and
``incident.unacknowledged`` become a firing signal, ``incident.resolved`` a resolved one, of
the incident's fingerprint (its PagerDuty id), so the resolution closes what the trigger
opened. Every other event (acknowledged, annotated, ``pagey.ping``, services, …) is ignored
with the reason (202).
"""

from __future__ import annotations

from collections.abc import Mapping

from heald.jsontext import quote
from heald.models import Severity, Signal, SignalStatus
from heald.sources._common import any_matches, fingerprint, header, hmac_sha256_hex, obj, text, timestamp
from heald.sources.base import SourceError, SourceIgnored, load_json, make_signal, register_source

FIRING = ("incident.triggered", "incident.reopened", "incident.escalated", "incident.unacknowledged")
RESOLVED = ("incident.resolved",)
#: Priorities (their usual names) that make an incident critical whatever its urgency.
CRITICAL_PRIORITIES = ("P1", "P2", "SEV1", "SEV-1", "SEV2", "SEV-2")


def signature(secret: str, body: bytes) -> str:
    """The ``X-PagerDuty-Signature`` value PagerDuty sends for ``body`` under ``secret``."""
    return "v1=" + hmac_sha256_hex(secret, body)


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Does one of the ``v1=`` signatures of ``X-PagerDuty-Signature`` match ``body`` under
    ``secret``? False when the header is missing or has no ``v1`` signature."""
    sent = [s.strip() for s in header(headers, "X-PagerDuty-Signature").split(",")[:16]]
    return any_matches(signature(secret, body), [s for s in sent if s.startswith("v1=")])


class PagerDutySource:
    """Parses PagerDuty V3 webhooks (see the module docstring)."""

    name = "pagerduty"
    sends_resolved = True

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        """See :func:`verify_signature`."""
        return verify_signature(headers, body, secret)

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal for an incident event heald acts on. Raises SourceIgnored for other
        events, SourceError naming the field for a payload that is not PagerDuty's."""
        data = load_json(body, "a PagerDuty V3 webhook payload in JSON")
        if not isinstance(data, dict):
            raise SourceError("(body)", 'a JSON object ({"event": {...}}, a PagerDuty V3 webhook)', type(data).__name__)
        if "event" not in data:
            raise SourceError("event", "the event object of a PagerDuty V3 webhook")
        event = obj(data["event"], "event")
        kind = text(event.get("event_type"), "event.event_type", required=True)
        if kind == "pagey.ping":
            raise SourceIgnored("pagey.ping: the webhook subscription reaches heald")
        if kind not in FIRING + RESOLVED:
            raise SourceIgnored(f"event {quote(kind)} is not one heald acts on; it heals "
                                f"{', '.join(FIRING)} and closes on {', '.join(RESOLVED)}")
        incident = obj(event.get("data"), "event.data")
        if not incident:
            raise SourceError("event.data", "the incident object")
        pd_id = text(incident.get("id"), "event.data.id", required=True)
        title = text(incident.get("title"), "event.data.title", 2000) or f"PagerDuty incident {pd_id}"
        service = obj(incident.get("service"), "event.data.service")
        service_name = text(service.get("summary"), "event.data.service.summary")
        urgency = text(incident.get("urgency"), "event.data.urgency", 20)
        priority = text(obj(incident.get("priority"), "event.data.priority").get("summary"),
                        "event.data.priority.summary", 50)
        labels = {"alertname": "PagerDutyIncident", "pd_incident": pd_id}
        if service_name:
            labels["service"] = service_name
        if urgency:
            labels["urgency"] = urgency
        if priority:
            labels["priority"] = priority
        notes = {"pd_event_id": text(event.get("id"), "event.id"), "pd_event_type": kind,
                 "html_url": text(incident.get("html_url"), "event.data.html_url", 2000),
                 "incident_key": text(incident.get("incident_key"), "event.data.incident_key", 500),
                 "pd_service_id": text(service.get("id"), "event.data.service.id")}
        severity = (Severity.critical if priority.upper() in CRITICAL_PRIORITIES or urgency == "high"
                    else Severity.warning)
        status = SignalStatus.resolved if kind in RESOLVED else SignalStatus.firing
        at = timestamp(event.get("occurred_at"), "event.occurred_at")
        started = timestamp(incident.get("created_at"), "event.data.created_at") or at
        return [make_signal("", source=self.name, kind="alert", service=service_name or None, status=status,
                            severity=severity, summary=title[:10_000], labels=labels,
                            annotations={k: v for k, v in notes.items() if v},
                            fingerprint=fingerprint("pagerduty", pd_id), starts_at=started,
                            ends_at=at if status == SignalStatus.resolved else None)]


register_source(PagerDutySource())
