"""The Alertmanager source: Prometheus Alertmanager's webhook (``webhook_configs``), served at
``POST /v1/webhooks/alertmanager``.

Format: the webhook message version "4", defined by prometheus/alertmanager
``notify/webhook/webhook.go`` (``Message``) and ``template/template.go`` (``Data``, ``Alert``):
``{"version": "4", "status", "receiver", "groupKey", "truncatedAlerts", "groupLabels",
"commonLabels", "commonAnnotations", "externalURL", "alerts": [{"status", "labels",
"annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}]}``. Grafana's webhook
(``"version": "1"``) has the same shape plus fields of its own: it is served by
:mod:`heald.sources.grafana` at ``POST /v1/webhooks/grafana``.

Each alert becomes one signal: ``status`` firing or resolved (an alert without one takes the
message's), its labels and annotations, ``starts_at``/``ends_at`` (Go's zero time
``0001-01-01T00:00:00Z`` means "not ended"), and Alertmanager's own fingerprint (computed the
way Alertmanager does when the sender omits it), so a resolved notification finds the
incident its firing one opened. The message's ``groupKey`` (the notification group its route's
``group_by`` made) is each signal's ``group``: the alerts Alertmanager grouped join one incident
(:func:`heald.correlate.grouping_key`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from heald.models import Severity, Signal, SignalStatus
from heald.sources.base import SourceError, WebhookSource, load_json, make_signal, register_source

#: Labels that name the service an alert is about, in order of preference.
SERVICE_LABELS = ("service", "app", "app_kubernetes_io_name", "job")

#: Alert severity label values and heald's severity for them.
SEVERITIES = {"critical": Severity.critical, "page": Severity.critical, "emergency": Severity.critical,
              "error": Severity.error, "high": Severity.error, "major": Severity.error,
              "warning": Severity.warning, "warn": Severity.warning, "medium": Severity.warning,
              "info": Severity.info, "low": Severity.info, "none": Severity.info}

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEPARATOR = 0xFF


def label_set_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over the label names (sorted) and
    values, each followed by the byte 0xff, as 16 hex digits. Source: prometheus/common
    ``model/signature.go`` (``labelSetToFingerprint``) and ``model/fnv.go``."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEPARATOR) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


class AlertIn(BaseModel):
    """One alert of the message (``template.Alert``)."""

    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"] | None = None
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # noqa: N815 (Alertmanager's field names)
    endsAt: datetime | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{1,32}$")

    @field_validator("labels")
    @classmethod
    def _alertname(cls, v: dict[str, str]) -> dict[str, str]:
        if "alertname" not in v:
            raise ValueError("an alert's labels need 'alertname'")
        return v


class MessageIn(BaseModel):
    """The webhook message (``webhook.Message``)."""

    model_config = ConfigDict(extra="allow")
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""  # noqa: N815
    truncatedAlerts: int = Field(default=0, ge=0)  # noqa: N815
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    alerts: list[AlertIn] = Field(min_length=1)


MessageT = TypeVar("MessageT", bound=BaseModel)


def validate_message(model: type[MessageT], data: dict[str, object]) -> MessageT:
    """``model.model_validate(data)``, raising SourceError naming the first bad field (dotted
    path, ``alerts.0.startsAt``) and what was expected instead of pydantic's ValidationError."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"]) or "(body)"
        got = e.get("input") if e["type"] not in ("missing",) else None
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        if e["type"] == "missing":
            msg = "a value (the field is required)"
        raise SourceError(where, msg, got if isinstance(got, (str, int, float)) else None) from err


def _ended(at: datetime | None) -> datetime | None:
    return None if at is None or at.year <= 1 else at


def _group(group_key: str) -> str | None:
    """The signal's ``group`` for a message's ``groupKey``: itself, hashed when it is longer than
    the field allows; None when the sender gave none."""
    if len(group_key) > 1000:
        return "sha256:" + hashlib.sha256(group_key.encode()).hexdigest()
    return group_key or None


def alert_signal(alert: AlertIn, message: MessageIn, where: str = "", source: str = "alertmanager",
                 extra: Mapping[str, str] | None = None) -> Signal:
    """The signal of one alert (see the module docstring); ``where`` prefixes the field named by
    a SourceError (``alerts.3.``); ``source`` names the sender and ``extra`` adds annotations
    (Grafana reuses this)."""
    labels = alert.labels
    status = SignalStatus(alert.status or message.status)
    service = next((labels[k] for k in SERVICE_LABELS if labels.get(k)), None)
    annotations = dict(alert.annotations)
    if alert.generatorURL:
        annotations.setdefault("generator_url", alert.generatorURL)
    if message.externalURL:
        annotations.setdefault("alertmanager_url", message.externalURL)
    for key, value in (extra or {}).items():
        annotations.setdefault(key, value)
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or labels["alertname"]
    return make_signal(where, source=source, kind="alert", service=service, status=status,
                  severity=SEVERITIES.get(labels.get("severity", "").lower(), Severity.warning),
                  summary=summary[:10_000], labels=labels, annotations=annotations,
                  fingerprint=alert.fingerprint or label_set_fingerprint(labels),
                  group=_group(message.groupKey), starts_at=alert.startsAt,
                  ends_at=_ended(alert.endsAt) if status == SignalStatus.resolved else None)


class AlertmanagerSource(WebhookSource):
    """Parses Alertmanager's webhook (see the module docstring). Alertmanager sends resolved
    notifications (``send_resolved``), so verification waits for them."""

    name = "alertmanager"
    sends_resolved = True

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One signal per alert. Raises SourceError naming the field (``alerts.0.startsAt``)
        and what was expected."""
        data = load_json(body, "an Alertmanager webhook message in JSON")
        if not isinstance(data, dict):
            raise SourceError("(body)", "a JSON object (Alertmanager webhook message version 4)", type(data).__name__)
        if data.get("version") == "1" and "orgId" in data:
            raise SourceError("version", '"4" (an Alertmanager message); this is a Grafana message (version "1"): '
                              "send it to /v1/webhooks/grafana", "1")
        message = validate_message(MessageIn, data)
        return [alert_signal(a, message, f"alerts.{i}.") for i, a in enumerate(message.alerts)]


register_source(AlertmanagerSource())
