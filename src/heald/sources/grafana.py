"""The Grafana source: Grafana Alerting's webhook contact point, served at
``POST /v1/webhooks/grafana``.

Format: Grafana's webhook message ``"version": "1"`` (grafana/alerting ``receivers/webhook``;
documented with an example at grafana.com, "Configure the webhook notifier for Alerting"). It
is Alertmanager's message (see :mod:`heald.sources.alertmanager`) plus ``orgId``, ``title``,
``state`` and ``message``, and per alert ``silenceURL``, ``dashboardURL``, ``panelURL`` and
``imageURL`` and ``values`` (the rule's query results by ref id, e.g. ``{"B": 44.2, "C": 1}``).

Each alert becomes one signal (``source`` "grafana", ``kind`` "alert") exactly as an
Alertmanager alert does, with Grafana's own ``fingerprint`` (16 hex digits of its label set),
so the resolved notification finds the incident its firing one opened. The URLs and values go
into annotations. Grafana does not sign by default: configure the contact point's
"Authorization header" (scheme ``Bearer``) or basic-auth password with heald's
``webhooks.grafana.secret``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from heald.models import Signal
from heald.sources.alertmanager import AlertIn, MessageIn, alert_signal, validate_message
from heald.sources.base import SourceError, load_json, register_source


class GrafanaAlertIn(AlertIn):
    """One alert of a Grafana message: Alertmanager's plus Grafana's links and values."""

    silenceURL: str = ""  # noqa: N815 (Grafana's field names)
    dashboardURL: str = ""  # noqa: N815
    panelURL: str = ""  # noqa: N815
    imageURL: str = ""  # noqa: N815
    values: dict[str, float | None] | None = None


class GrafanaMessageIn(MessageIn):
    """Grafana's webhook message, version "1"."""

    version: Literal["1"]  # type: ignore[assignment]  # Grafana's version "1" of the same shape
    orgId: int | None = None  # noqa: N815
    title: str = ""
    state: str = ""
    message: str = ""
    alerts: list[GrafanaAlertIn] = Field(min_length=1)  # type: ignore[assignment]


def _values(values: dict[str, float | None]) -> str:
    return ", ".join(f"{k}={v:.6g}" if v is not None and math.isfinite(v) else f"{k}={v}"
                     for k, v in sorted(values.items()))[:1000]


class GrafanaSource:
    """Parses Grafana Alerting's webhook (see the module docstring). Grafana sends resolved
    notifications, so verification waits for them."""

    name = "grafana"
    sends_resolved = True

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal per alert. Raises SourceError naming the field (``alerts.0.labels``) and
        what was expected."""
        data = load_json(body, "a Grafana webhook message in JSON")
        if not isinstance(data, dict):
            raise SourceError("(body)", 'a JSON object (Grafana webhook message, "version": "1")', type(data).__name__)
        message = validate_message(GrafanaMessageIn, data)
        signals = []
        for i, alert in enumerate(message.alerts):
            links = {"silence_url": alert.silenceURL, "dashboard_url": alert.dashboardURL,
                     "panel_url": alert.panelURL, "image_url": alert.imageURL}
            extra = {key: url[:2000] for key, url in links.items() if url}
            if alert.values:
                extra["values"] = _values(alert.values)
            if message.orgId is not None:
                extra["grafana_org_id"] = str(message.orgId)
            signals.append(alert_signal(alert, message, f"alerts.{i}.", source=self.name, extra=extra))
        return signals


register_source(GrafanaSource())
