"""The generic JSON source: a body that is one signal object or a list of them, in heald's own
schema (:class:`heald.models.Signal`). Served at ``POST /v1/signals`` and
``POST /v1/webhooks/generic``."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from heald.models import Signal
from heald.sources.base import SourceError, WebhookSource, load_json, register_source

#: Fields a client may not set: the store assigns them.
SERVER_FIELDS = ("id", "received_at", "incident_id", "suppressed_by")


def parse_signal(data: object, where: str = "") -> Signal:
    """Validate one signal object. Raises SourceError naming the first bad field."""
    if not isinstance(data, dict):
        raise SourceError(where or "(body)", "a JSON object", type(data).__name__)
    for key in SERVER_FIELDS:
        if key in data:
            raise SourceError(f"{where}{key}", "no value: the server assigns it")
    try:
        return Signal.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        field = (where + ".".join(str(p) for p in e["loc"])).rstrip(".") or "(body)"
        raise SourceError(field, e["msg"].lower().removeprefix("input should be ").removeprefix("value error, ")) from err


class GenericSource(WebhookSource):
    name = "generic"

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        data = load_json(body, "a signal object or a list of them in JSON")
        if isinstance(data, list):
            if not data:
                raise SourceError("(body)", "a signal object or a non-empty list of them", "[]")
            return [parse_signal(item, f"[{i}].") for i, item in enumerate(data)]
        return [parse_signal(data)]


register_source(GenericSource())
