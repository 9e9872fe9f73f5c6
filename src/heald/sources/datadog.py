"""The Datadog source: Datadog's Webhooks integration, served at ``POST /v1/webhooks/datadog``.

Format: the body is the JSON template the user writes in Datadog (docs.datadoghq.com,
"Webhooks integration", template variables ``$ID``, ``$EVENT_TITLE``, ``$ALERT_ID``,
``$ALERT_TRANSITION``, …). heald reads the default template — ``{"id", "title", "body",
"last_updated", "event_type", "date", "org": {"id", "name"}}``, where the title starts with
the transition (``[Triggered] …``, ``[Recovered] …``) — and these fields of the template
documented in docs/sources.md (all optional, strings as Datadog fills them)::

    alert_id ($ALERT_ID), alert_transition ($ALERT_TRANSITION), alert_type ($ALERT_TYPE),
    alert_priority ($ALERT_PRIORITY), alert_scope ($ALERT_SCOPE), alert_query ($ALERT_QUERY),
    alert_title ($ALERT_TITLE), hostname ($HOSTNAME), tags ($TAGS), link ($LINK),
    aggreg_key ($AGGREG_KEY)

A transition ``Recovered`` (or a title starting ``[Recovered]``) resolves; ``Triggered``,
``Re-Triggered``, ``Warn``, ``Re-Warn``, ``No Data``, ``Re-No Data`` and ``Renotify`` fire. The
fingerprint is the monitor (``alert_id``) and its group (``alert_scope``), or without them the
title stripped of its transition, so a recovery finds its trigger. ``service`` is the
``service:`` tag, else the host. Datadog does not sign its webhooks: give the secret as a
custom header (``X-Heald-Webhook-Secret``) or basic-auth password.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from heald.models import Severity, Signal, SignalStatus
from heald.sources._common import fingerprint, text
from heald.sources.base import SourceError, SourceIgnored, load_json, make_signal, register_source

RESOLVING = ("recovered",)
FIRING = ("triggered", "re-triggered", "warn", "re-warn", "no data", "re-no data", "renotify")
SEVERITIES = {"error": Severity.error, "warning": Severity.warning, "info": Severity.info,
              "success": Severity.info}
#: ``[Triggered] …`` or, for a multi-alert monitor, ``[Triggered on {host:web-1}] …``
_PREFIX = re.compile(r"^\s*\[([A-Za-z -]{1,30}?)(?: on \{([^\]]{0,500})\})?\]\s*")


def _tags(value: str) -> dict[str, str]:
    """``$TAGS`` (``"env:prod,service:web,team:a"``) as a mapping; tags without ``:`` are
    dropped; at most 50."""
    out: dict[str, str] = {}
    for tag in value.split(",")[:50]:
        name, sep, val = tag.strip().partition(":")
        if sep and name:
            out.setdefault(name[:100], val[:200])
    return out


def _millis(value: str) -> datetime | None:
    """``$DATE``/``$LAST_UPDATED``: milliseconds since the epoch, as a string."""
    if not value.isascii() or not value.isdigit() or len(value) > 15:
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):  # beyond the years datetime holds
        return None


class DatadogSource:
    """Parses Datadog webhooks (see the module docstring)."""

    name = "datadog"
    sends_resolved = True

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal per webhook. Raises SourceIgnored for a transition heald does not act on,
        SourceError naming the field for a body that is not a Datadog webhook."""
        data = load_json(body, "a Datadog webhook body in JSON")
        if not isinstance(data, dict):
            raise SourceError("(body)", "a JSON object (a Datadog webhook template)", type(data).__name__)
        fields = {k: text(data.get(k), k, 4000 if k in ("body", "alert_query") else 2000)
                  for k in ("id", "title", "body", "last_updated", "date", "event_type", "alert_id",
                            "alert_transition", "alert_type", "alert_priority", "alert_scope", "alert_query",
                            "alert_title", "hostname", "tags", "link", "aggreg_key")}
        title = fields["title"] or fields["alert_title"]
        if not title:
            raise SourceError("title", "the event title ($EVENT_TITLE) or alert_title ($ALERT_TITLE)")
        prefix = _PREFIX.match(title)
        transition = (fields["alert_transition"] or (prefix.group(1) if prefix else "")).strip().lower()
        if transition in RESOLVING:
            status = SignalStatus.resolved
        elif transition in FIRING:
            status = SignalStatus.firing
        elif transition:
            raise SourceIgnored(f"transition {transition[:40]!r} is neither a trigger nor a recovery")
        else:
            raise SourceError("alert_transition", "a transition ($ALERT_TRANSITION, e.g. Triggered or Recovered), "
                              "or a title starting with one ([Triggered] …)")
        # the transition prefix changes from trigger to recovery; the rest of the title does not
        stripped = (_PREFIX.sub("", title, count=1)
                    if prefix and prefix.group(1).strip().lower() in RESOLVING + FIRING else title)
        tags = _tags(fields["tags"])
        service = tags.get("service") or fields["hostname"] or None
        labels = {"alertname": (fields["alert_title"] or stripped)[:200]}
        if fields["alert_id"]:
            labels["monitor_id"] = fields["alert_id"][:200]
        if fields["alert_scope"]:
            labels["scope"] = fields["alert_scope"][:200]
        for name in ("service", "env"):
            if name in tags:
                labels[name] = tags[name]
        if fields["hostname"]:
            labels["host"] = fields["hostname"][:200]
        key = (("monitor", fields["alert_id"], fields["alert_scope"]) if fields["alert_id"]
               else ("title", stripped, (prefix.group(2) or "") if prefix else "", fields["aggreg_key"]))
        notes = {"body": fields["body"], "link": fields["link"], "query": fields["alert_query"],
                 "transition": transition, "event_id": fields["id"], "event_type": fields["event_type"],
                 "priority": fields["alert_priority"], "tags": fields["tags"][:2000]}
        severity = (Severity.critical if fields["alert_priority"].upper() == "P1"
                    else SEVERITIES.get(fields["alert_type"].lower(), Severity.error))
        at = _millis(fields["date"]) or _millis(fields["last_updated"])
        return [make_signal("", source=self.name, kind="alert", service=service[:200] if service else None,
                            status=status, severity=severity, summary=title[:10_000], labels=labels,
                            annotations={k: v for k, v in notes.items() if v},
                            fingerprint=fingerprint("datadog", *key),
                            starts_at=at, ends_at=at if status == SignalStatus.resolved else None)]


register_source(DatadogSource())
