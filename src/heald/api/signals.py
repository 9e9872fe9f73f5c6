"""Signals in: ``POST /v1/signals`` (heald's generic JSON schema; a 422 names the bad field)
and ``POST /v1/webhooks/{source}`` (any registered webhook source, see :mod:`heald.sources`).

A signal is stored (committed) before the 2xx answer is sent, so an accepted signal is never
lost to a crash. A big message is stored in chunks (``api.signals_per_transaction``); when a
transient database error stops it, the chunks stored stay stored and the answer is 503 with
``Retry-After`` and the signals stored so far (Alertmanager and most senders retry a 5xx;
a redelivery stores only what is missing, see :mod:`heald.correlate.deliveries`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from heald.auth import Principal, require, webhook_principal
from heald.correlate import IngestResult
from heald.engine import Runtime
from heald.engine.cluster import fanout_delivery_id
from heald.engine.runtime import IngestIncomplete
from heald.http_limits import HealdRoute
from heald.jsontext import quote
from heald.models import Role
from heald.models import Signal as SignalModel
from heald.sources import WEBHOOK_SOURCES, SourceError, SourceIgnored
from heald.sources.generic import SERVER_FIELDS

#: Signal fields only the server sets (a client of POST /v1/signals does not name a raw payload).
SERVER_ASSIGNED = (*SERVER_FIELDS, "raw_ref")


class SignalIn(SignalModel):
    """A signal as a client sends it: :class:`heald.models.Signal` (the same fields, limits and
    checks) without the fields the server assigns, which are refused when sent (422 naming the
    field) and left out of the OpenAPI schema. Unknown fields are refused too."""

    model_config = ConfigDict(extra="forbid")
    starts_at: datetime | None = Field(default=None, description="RFC 3339; default: when received")
    raw_ref: SkipJsonSchema[None] = None
    id: SkipJsonSchema[None] = None
    received_at: SkipJsonSchema[None] = None
    incident_id: SkipJsonSchema[None] = None
    suppressed_by: SkipJsonSchema[None] = None

    @field_validator(*SERVER_ASSIGNED, mode="before")
    @classmethod
    def _server_assigns(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("no value: the server assigns it")
        return v


class Accepted(BaseModel):
    signal_id: int
    incident_id: int | None
    opened: bool
    suppressed_by: str | None = None


#: Seconds a sender is asked to wait (``Retry-After``) before sending again a message that a
#: transient database error stopped.
RETRY_AFTER_SECONDS = 5


def _retry_detail(exc: IngestIncomplete) -> str:
    return (f"{len(exc.accepted)} of the message's {exc.total} signals were stored before a transient database "
            f"error ({type(exc.cause).__name__}); send it again after {RETRY_AFTER_SECONDS} s (signals already "
            f"stored are not lost)")


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["signals"], route_class=HealdRoute)

    def accept(signal: SignalModel, actor: str | None = None) -> Accepted:
        try:
            r = rt.ingest(signal, actor=actor)
        except IngestIncomplete as exc:
            raise HTTPException(503, detail=_retry_detail(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
        return Accepted(signal_id=r.signal_id, incident_id=r.incident_id, opened=r.opened, suppressed_by=r.suppressed_by)

    @router.post("/v1/signals", status_code=202, response_model=Accepted)
    def post_signal(body: SignalIn, who: Principal = Depends(require(Role.operator))) -> Accepted:
        """Accept one signal in heald's generic JSON schema (role operator)."""
        # SignalIn is a Signal (validated by the same checks): store it as the plain model
        return accept(SignalModel.model_validate(body.model_dump(exclude_none=True)), who.actor)

    @router.post("/v1/webhooks/{source}", status_code=202, openapi_extra={"requestBody": {
        "required": True, "description": "the source's own payload (e.g. an Alertmanager webhook message)",
        "content": {"application/json": {"schema": {}}}}})
    async def post_webhook(source: str, request: Request) -> JSONResponse:
        """Accept a payload from a registered webhook source; 404 for an unknown source, 401/403
        when the request proves neither the source's secret (or signature) nor an operator
        token, 422 naming the field for a payload the source rejects, 413 for a body over
        ``api.max_body_bytes`` (before authentication) or a message of more than
        ``api.max_signals_per_message`` alerts or events. Every signal of the payload is stored
        before the 202 is sent, in transactions of at most ``api.signals_per_transaction``; 503
        with ``Retry-After`` and the signals stored so far (``accepted``) when a transient
        database error stopped it."""
        plugin = WEBHOOK_SOURCES.get(source)
        if plugin is None:
            raise HTTPException(404, detail=f"unknown source {quote(source)}; known: {', '.join(sorted(WEBHOOK_SOURCES))}")
        if not plugin.signed:
            # nothing to verify in the body: refuse a stranger before reading a byte of it
            await run_in_threadpool(webhook_principal, request, source, plugin, b"")
            body = await request.body()
        else:  # a signature covers the body (read at most api.max_body_bytes of it)
            body = await request.body()
            await run_in_threadpool(webhook_principal, request, source, plugin, body)
        try:
            signals = await run_in_threadpool(plugin.parse, request.headers, body)
        except SourceIgnored as exc:
            return JSONResponse({"accepted": [], "ignored": True, "reason": exc.reason}, 202)
        except SourceError as exc:
            return JSONResponse({"detail": [{"loc": ["body", *exc.field.split(".")], "msg": str(exc)}]}, 422)
        cap = rt.config.api.max_signals_per_message
        if len(signals) > cap:
            return JSONResponse({"detail": f"too many alerts or events in one message: {len(signals)}; at most {cap} "
                                           f"are accepted (api.max_signals_per_message)"}, 413)
        # a message without its sender's delivery id: the same one sent to several workers is one delivery
        delivery = plugin.delivery_id(request.headers) or fanout_delivery_id(rt.store, rt.config, source, signals)
        try:
            if delivery:
                results = await run_in_threadpool(rt.ingest_delivery, source, delivery, signals, f"source:{source}")
                if results is None:
                    return JSONResponse({"accepted": [], "duplicate": True, "delivery": delivery,
                                         "reason": f"delivery {delivery} was accepted before; this redelivery is "
                                                   f"dropped"}, 202)
            else:
                results = await run_in_threadpool(rt.ingest_many, signals, f"source:{source}")
        except IngestIncomplete as exc:
            return JSONResponse({"accepted": _accepted(exc.accepted), "detail": _retry_detail(exc)}, 503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return JSONResponse({"accepted": _accepted(results)}, 202)

    return router


def _accepted(results: list[IngestResult]) -> list[dict[str, Any]]:
    return [Accepted(signal_id=r.signal_id, incident_id=r.incident_id, opened=r.opened,
                     suppressed_by=r.suppressed_by).model_dump() for r in results]
