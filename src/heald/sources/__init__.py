"""Sources: where signals come from.

A webhook source is a plugin with a tiny contract (as Keep's providers), the base class
:class:`WebhookSource` (:mod:`heald.sources.base`): ``parse(headers, body) -> list[Signal]``,
raising :class:`SourceError` naming the field and what was expected, and, with defaults to
override, ``verify(headers, body, secret) -> bool`` when the sender signs its requests and
``delivery_id(headers) -> str | None`` when the sender names each delivery (a redelivery with a
known id is dropped). ``parse`` raises :class:`SourceIgnored` for a payload that is valid but
not something heald acts on (answered 202 with the reason).
Sources register themselves in :data:`WEBHOOK_SOURCES`; the API serves each at
``POST /v1/webhooks/<name>`` and the core knows none by name. Active checks (probes) live in
:mod:`heald.sources.probes`.
"""

from __future__ import annotations

# The built-in webhook sources register themselves when imported.
# isort: off
from heald.sources import generic, github, alertmanager, cloudevents  # noqa: F401  (registration order)
from heald.sources import grafana, pagerduty, sentry, datadog, kubernetes  # noqa: F401
# isort: on
from heald.sources.base import (
    SOURCE_METRICS,
    WEBHOOK_SOURCES,
    SourceError,
    SourceIgnored,
    WebhookSource,
    load_json,
    make_signal,
    register_source,
)

__all__ = ["SOURCE_METRICS", "WEBHOOK_SOURCES", "SourceError", "SourceIgnored", "WebhookSource", "load_json", "make_signal",
           "register_source"]
