"""The Sentry source: alert webhooks of a Sentry internal integration, served at
``POST /v1/webhooks/sentry``.

Format (docs.sentry.io, "Integration Platform: Webhooks", "Issue Alerts" and "Metric
Alerts"): headers ``Sentry-Hook-Resource`` (``event_alert``, ``metric_alert``, ``issue``,
``installation``, …), ``Request-ID`` (the delivery's id), ``Sentry-Hook-Timestamp`` and
``Sentry-Hook-Signature``: the hex HMAC-SHA256 of the raw body keyed with the integration's
client secret. The body is ``{"action", "actor", "data", "installation"}``:

- ``event_alert`` (an issue alert rule fired; action ``triggered``): ``data.event`` is the
  error event (``issue_id``, ``title``, ``culprit``, ``environment``, ``web_url``, ``level``,
  ``project``), ``data.triggered_rule`` the rule's name. A firing signal per issue;
- ``metric_alert`` (action ``critical``, ``warning`` or ``resolved``): ``data.metric_alert``
  is the metric incident with its ``alert_rule`` (``id``, ``name``, ``projects``,
  ``aggregate``, ``query``), ``data.description_title``/``description_text``, ``data.web_url``.
  Firing for critical (critical) and warning (warning), resolved for resolved; one fingerprint
  per alert rule;
- ``issue`` with action ``resolved``: a resolved signal for the issue an issue alert opened.

Anything else is ignored with the reason (202).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heald.jsontext import quote
from heald.models import Severity, Signal, SignalStatus
from heald.sources._common import any_matches, fingerprint, header, hmac_sha256_hex, obj, text, timestamp
from heald.sources.base import SourceError, SourceIgnored, load_json, make_signal, register_source

LEVELS = {"fatal": Severity.critical, "error": Severity.error, "warning": Severity.warning,
          "info": Severity.info, "debug": Severity.info}
METRIC_ACTIONS = {"critical": (SignalStatus.firing, Severity.critical),
                  "warning": (SignalStatus.firing, Severity.warning),
                  "resolved": (SignalStatus.resolved, Severity.warning)}


def signature(secret: str, body: bytes) -> str:
    """The ``Sentry-Hook-Signature`` value Sentry sends for ``body`` under the client secret."""
    return hmac_sha256_hex(secret, body)


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Does ``Sentry-Hook-Signature`` match ``body`` under ``secret``? False when missing."""
    sent = header(headers, "Sentry-Hook-Signature")
    return bool(sent) and any_matches(signature(secret, body), [sent])


def _issue_fingerprint(issue_id: str) -> str:
    return fingerprint("sentry", "issue", issue_id)


def _project(value: Any, path: str) -> str:
    """A project named by slug (a string), or an object with ``slug``/``name``."""
    if isinstance(value, dict):
        return text(value.get("slug") or value.get("name"), f"{path}.slug")
    return text(value, path)


class SentrySource:
    """Parses Sentry's issue and metric alert webhooks (see the module docstring)."""

    name = "sentry"
    sends_resolved = True

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        """See :func:`verify_signature`."""
        return verify_signature(headers, body, secret)

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """``Request-ID``: Sentry's id of the delivery."""
        value = header(headers, "Request-ID").strip()
        return value[:200] or None

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal for an issue alert, a metric alert or an issue resolution. Raises
        SourceIgnored for other resources and actions, SourceError naming the field."""
        resource = header(headers, "Sentry-Hook-Resource").strip()
        if not resource:
            raise SourceError("headers.Sentry-Hook-Resource", "the Sentry resource (event_alert, metric_alert, issue)")
        data = load_json(body, "a Sentry webhook payload in JSON")
        if not isinstance(data, dict):
            raise SourceError("(body)", "a JSON object (a Sentry webhook payload)", type(data).__name__)
        action = text(data.get("action"), "action", 50, required=True)
        payload = obj(data.get("data"), "data")
        if resource == "event_alert":
            return [self._event_alert(action, payload)]
        if resource == "metric_alert":
            return [self._metric_alert(action, payload)]
        if resource == "issue" and action == "resolved":
            issue = obj(payload.get("issue"), "data.issue")
            issue_id = text(issue.get("id"), "data.issue.id", required=True)
            project = _project(issue.get("project"), "data.issue.project")
            title = text(issue.get("title"), "data.issue.title", 2000) or f"Sentry issue {issue_id}"
            return [make_signal("", source=self.name, kind="alert", service=project or None,
                                status=SignalStatus.resolved, summary=f"resolved in Sentry: {title}"[:10_000],
                                labels={"alertname": "SentryIssue", "issue_id": issue_id},
                                annotations={"web_url": text(issue.get("web_url") or issue.get("permalink"),
                                                             "data.issue.web_url", 2000)},
                                fingerprint=_issue_fingerprint(issue_id))]
        raise SourceIgnored(f"Sentry {quote(resource)} {quote(action)}: heald acts on event_alert, metric_alert "
                            f"and issue resolved")

    def _event_alert(self, action: str, payload: dict[str, Any]) -> Signal:
        if action != "triggered":
            raise SourceIgnored(f"event_alert action {quote(action)}: only triggered alerts are healed")
        event = obj(payload.get("event"), "data.event")
        if not event:
            raise SourceError("data.event", "the error event of the issue alert")
        issue_id = text(event.get("issue_id"), "data.event.issue_id", required=True)
        meta = obj(event.get("metadata"), "data.event.metadata")
        title = (text(event.get("title"), "data.event.title", 2000)
                 or text(meta.get("title") or meta.get("value"), "data.event.metadata.value", 2000)
                 or f"Sentry issue {issue_id}")
        project = _project(event.get("project"), "data.event.project")
        rule = text(payload.get("triggered_rule"), "data.triggered_rule")
        environment = text(event.get("environment"), "data.event.environment")
        labels = {"alertname": "SentryIssue", "issue_id": issue_id}
        if environment:
            labels["environment"] = environment
        if project:
            labels["project"] = project
        notes = {"web_url": text(event.get("web_url"), "data.event.web_url", 2000),
                 "culprit": text(event.get("culprit"), "data.event.culprit", 2000),
                 "event_id": text(event.get("event_id"), "data.event.event_id"),
                 "platform": text(event.get("platform"), "data.event.platform"),
                 "triggered_rule": rule,
                 "error_type": text(meta.get("type"), "data.event.metadata.type", 500),
                 "filename": text(meta.get("filename"), "data.event.metadata.filename", 2000),
                 "function": text(meta.get("function"), "data.event.metadata.function", 500)}
        level = text(event.get("level"), "data.event.level", 20).lower()
        return make_signal("", source=self.name, kind="alert", service=project or None,
                           severity=LEVELS.get(level, Severity.error), summary=title[:10_000], labels=labels,
                           annotations={k: v for k, v in notes.items() if v},
                           fingerprint=_issue_fingerprint(issue_id),
                           starts_at=timestamp(event.get("datetime"), "data.event.datetime"))

    def _metric_alert(self, action: str, payload: dict[str, Any]) -> Signal:
        if action not in METRIC_ACTIONS:
            raise SourceError("action", "critical, warning or resolved (a metric alert's action)", action)
        status, severity = METRIC_ACTIONS[action]
        incident = obj(payload.get("metric_alert"), "data.metric_alert")
        rule = obj(incident.get("alert_rule"), "data.metric_alert.alert_rule")
        if not rule:
            raise SourceError("data.metric_alert.alert_rule", "the metric alert's rule")
        rule_id = text(rule.get("id"), "data.metric_alert.alert_rule.id", required=True)
        name = text(rule.get("name"), "data.metric_alert.alert_rule.name") or f"Sentry metric alert {rule_id}"
        projects = rule.get("projects") or []
        if not isinstance(projects, list):
            raise SourceError("data.metric_alert.alert_rule.projects", "a list of project slugs", type(projects).__name__)
        project = _project(projects[0], "data.metric_alert.alert_rule.projects.0") if projects else ""
        labels = {"alertname": name, "alert_rule_id": rule_id}
        if project:
            labels["project"] = project
        notes = {"web_url": text(payload.get("web_url"), "data.web_url", 2000),
                 "description": text(payload.get("description_text"), "data.description_text", 4000),
                 "aggregate": text(rule.get("aggregate"), "data.metric_alert.alert_rule.aggregate", 500),
                 "query": text(rule.get("query"), "data.metric_alert.alert_rule.query", 2000),
                 "metric_incident": text(incident.get("id"), "data.metric_alert.id")}
        title = text(payload.get("description_title"), "data.description_title", 2000) or name
        started = (timestamp(incident.get("date_started"), "data.metric_alert.date_started")
                   or timestamp(incident.get("date_detected"), "data.metric_alert.date_detected"))
        closed = timestamp(incident.get("date_closed"), "data.metric_alert.date_closed")
        return make_signal("", source=self.name, kind="alert", service=project or None, status=status,
                           severity=severity, summary=title[:10_000], labels=labels,
                           annotations={k: v for k, v in notes.items() if v},
                           fingerprint=fingerprint("sentry", "metric_alert", rule_id), starts_at=started,
                           ends_at=closed if status == SignalStatus.resolved else None)


register_source(SentrySource())
