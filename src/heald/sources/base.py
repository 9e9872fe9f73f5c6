"""The webhook source contract (:class:`WebhookSource`) and what sources share: the registry
:data:`WEBHOOK_SOURCES`, :class:`SourceError`, :class:`SourceIgnored`, :func:`load_json`,
:func:`make_signal`. See :mod:`heald.sources`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

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


class WebhookSource:
    """A source that receives HTTP requests (``POST /v1/webhooks/<name>``).

    A source subclasses this and sets ``name`` and :meth:`parse`; it overrides :meth:`verify`
    when the sender signs its requests (:attr:`signed` is then true) and :meth:`delivery_id`
    when the sender names each delivery. The defaults say "not signed" and "no delivery id"."""

    name: str

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """Turn one request into signals. Raises SourceError (bad payload) or SourceIgnored
        (a valid payload heald does not act on)."""
        raise NotImplementedError(f"webhook source {self.name!r} does not parse")

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        """Whether the request's signature over ``body`` matches ``secret``; only called when
        :attr:`signed`. The default (an unsigned source) verifies nothing."""
        return False

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """The sender's id of this delivery (a redelivery carries the same), or None."""
        return None

    @property
    def signed(self) -> bool:
        """Whether the sender signs its requests: the source overrides :meth:`verify`."""
        return type(self).verify is not WebhookSource.verify


class _Parser(Protocol):
    name: str

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]: ...


class _Unsubclassed(WebhookSource):
    """A source written before :class:`WebhookSource` became a base class (a plain object with
    ``name``, ``parse`` and optionally ``verify``/``delivery_id``): its members are read once,
    here, so nothing else probes a source for them."""

    def __init__(self, source: _Parser):
        self.name = source.name
        self._source = source
        self._verify = getattr(source, "verify", None)
        self._delivery_id = getattr(source, "delivery_id", None)

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        return self._source.parse(headers, body)

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        return bool(self._verify(headers, body, secret)) if self._verify is not None else False

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        return self._delivery_id(headers) if self._delivery_id is not None else None

    @property
    def signed(self) -> bool:
        return self._verify is not None


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


S = TypeVar("S", bound=_Parser)


def register_source(source: S) -> S:
    """Serve ``source`` at ``POST /v1/webhooks/<source.name>``; returns it. A source should
    subclass :class:`WebhookSource`; one that does not (the shape before) is wrapped."""
    WEBHOOK_SOURCES[source.name] = source if isinstance(source, WebhookSource) else _Unsubclassed(source)
    return source
