"""Sources: where signals come from.

A webhook source is a plugin with a tiny contract (as Keep's providers): ``parse(headers,
body) -> list[Signal]``, raising :class:`SourceError` naming the field and what was expected,
and optionally ``verify(headers, body, secret) -> bool`` when the sender signs its requests and
``delivery_id(headers) -> str | None`` when the sender names each delivery (a redelivery with a
known id is dropped). ``parse`` raises :class:`SourceIgnored` for a payload that is valid but
not something heald acts on (answered 202 with the reason).
Sources register themselves in :data:`WEBHOOK_SOURCES`; the API serves each at
``POST /v1/webhooks/<name>`` and the core knows none by name. Active checks (probes) live in
:mod:`heald.sources.probes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from prometheus_client.registry import Collector
from pydantic import ValidationError

from heald.jsontext import JSONInputError, excerpt, loads
from heald.models import Signal


class SourceError(ValueError):
    """A payload a source cannot accept. ``field`` is the dotted path of the bad field (cut
    to 200 characters); the message quotes at most a short excerpt of the value ``got``."""

    def __init__(self, field: str, expected: str, got: object = None):
        self.field = excerpt(field, 200)
        self.expected = excerpt(expected, 500)
        detail = f"{self.field}: expected {self.expected}"
        if got is not None:
            detail += f", got {excerpt(got, 100)}"
        super().__init__(detail)


class SourceIgnored(Exception):
    """A valid payload heald does not act on (a successful CI run, a ``ping``); ``reason`` says
    why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class WebhookSource(Protocol):
    """A source that receives HTTP requests."""

    name: str

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """Turn one request into signals. Raises SourceError."""
        ...


WEBHOOK_SOURCES: dict[str, WebhookSource] = {}

#: Prometheus collectors kept by sources themselves (e.g. Kubernetes Normal events, counted and
#: not stored); the API's ``/metrics`` registry registers each. Counted per process.
SOURCE_METRICS: list[Collector] = []


def load_json(body: bytes | str, what: str) -> Any:
    """The JSON document of a request body, parsed with the bounds of
    :func:`heald.jsontext.loads` (nesting, integer size, no lone surrogates). Raises
    SourceError naming the field and saying that ``what`` (e.g. "an Alertmanager webhook
    message") was expected."""
    try:
        return loads(body)
    except JSONInputError as exc:
        expected = exc.expected if exc.field != "(body)" else f"{what}: {exc.expected}"
        raise SourceError(exc.field, expected) from exc


def make_signal(where: str = "", **fields: Any) -> Signal:
    """``Signal(**fields)``, raising SourceError (the field prefixed with ``where``) instead of
    pydantic's ValidationError when a value taken from a payload does not fit the signal
    schema (a source's last line of defence: its parser should have named the payload field)."""
    try:
        return Signal(**fields)
    except ValidationError as err:
        e = err.errors()[0]
        field = where + ".".join(str(p) for p in e["loc"])
        raise SourceError(field, e["msg"].lower().removeprefix("input should be ").removeprefix("value error, ")) from err


def register_source(source: WebhookSource) -> WebhookSource:
    WEBHOOK_SOURCES[source.name] = source
    return source


from heald.sources import generic as _generic  # noqa: E402,F401
from heald.sources import github as _github  # noqa: E402,F401
from heald.sources import alertmanager as _alertmanager  # noqa: E402,F401
from heald.sources import cloudevents as _cloudevents  # noqa: E402,F401
from heald.sources import grafana as _grafana  # noqa: E402,F401
from heald.sources import pagerduty as _pagerduty  # noqa: E402,F401
from heald.sources import sentry as _sentry  # noqa: E402,F401
from heald.sources import datadog as _datadog  # noqa: E402,F401
from heald.sources import kubernetes as _kubernetes  # noqa: E402,F401
