"""The HTTP API: signals in, incidents out, approvals, health and metrics.

``POST /v1/signals`` (generic JSON signal; a 422 names the bad field), ``POST
/v1/webhooks/{source}`` (any registered webhook source), ``GET /v1/incidents``, ``GET
/v1/incidents/{id}`` (with its timeline), ``POST /v1/incidents/{id}/approve`` and
``/reject``, ``GET /v1/audit/verify``, ``GET /healthz``, ``GET /metrics`` (Prometheus text
format). The OpenAPI document is at ``/openapi.json`` (browsable at ``/docs``).

A signal is stored (committed) before the 2xx answer is sent, so an accepted signal is never
lost to a crash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from heald import __version__
from heald.api.metrics import registry_for
from heald.engine import Runtime
from heald.models import Incident, IncidentState, Severity, SignalStatus
from heald.models import Signal as SignalModel
from heald.sources import WEBHOOK_SOURCES, SourceError
from heald.store import InvalidTransition, NotFound


class SignalIn(BaseModel):
    """A signal as a client sends it (heald's generic JSON schema)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1, max_length=100, examples=["my-monitor"])
    kind: str = Field(default="alert", min_length=1, max_length=100)
    service: str | None = Field(default=None, max_length=200)
    status: SignalStatus = SignalStatus.firing
    severity: Severity = Severity.warning
    summary: str = Field(default="", max_length=10_000)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    fingerprint: str | None = Field(default=None, max_length=128)
    starts_at: datetime | None = Field(default=None, description="RFC 3339; default: when received")
    ends_at: datetime | None = None


class Accepted(BaseModel):
    signal_id: int
    incident_id: int | None
    opened: bool
    suppressed_by: str | None = None


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approver: str = Field(min_length=1, max_length=200, description="who approves or rejects")
    comment: str = Field(default="", max_length=5000)


def create_app(rt: Runtime) -> FastAPI:
    """The FastAPI application over a started (or about to be started) Runtime."""
    app = FastAPI(title="heald", version=__version__,
                  description="Self-healing control plane: signals → incidents → diagnosis → gated remedies → verification.")
    registry = registry_for(rt.store)

    def accept(signal: SignalModel, actor: str | None = None) -> Accepted:
        r = rt.ingest(signal, actor=actor)
        return Accepted(signal_id=r.signal_id, incident_id=r.incident_id, opened=r.opened, suppressed_by=r.suppressed_by)

    @app.post("/v1/signals", status_code=202, response_model=Accepted, tags=["signals"])
    def post_signal(body: SignalIn) -> Accepted:
        """Accept one signal in heald's generic JSON schema."""
        return accept(SignalModel.model_validate(body.model_dump(exclude_none=True)))

    @app.post("/v1/webhooks/{source}", status_code=202, tags=["signals"])
    async def post_webhook(source: str, request: Request) -> JSONResponse:
        """Accept a payload from a registered webhook source; 404 for an unknown source, 422
        naming the field for a payload the source rejects."""
        plugin = WEBHOOK_SOURCES.get(source)
        if plugin is None:
            raise HTTPException(404, detail=f"unknown source {source!r}; known: {', '.join(sorted(WEBHOOK_SOURCES))}")
        body = await request.body()
        try:
            signals = plugin.parse(request.headers, body)
        except SourceError as exc:
            return JSONResponse({"detail": [{"loc": ["body", *exc.field.split(".")], "msg": str(exc)}]}, 422)
        accepted = [(await run_in_threadpool(accept, s, f"source:{source}")).model_dump() for s in signals]
        return JSONResponse({"accepted": accepted}, 202)

    @app.get("/v1/incidents", tags=["incidents"])
    def list_incidents(state: IncidentState | None = None, service: str | None = None,
                       limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        """Incidents, newest first, optionally only those in ``state``."""
        return [_incident_json(i) for i in rt.store.list_incidents(state=state, service=service, limit=limit, offset=offset)]

    @app.get("/v1/incidents/{incident_id}", tags=["incidents"])
    def get_incident(incident_id: int) -> dict[str, Any]:
        """One incident with its signals, diagnoses, plan, decisions, actions, verifications and timeline."""
        try:
            return rt.store.incident_detail(incident_id)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    def verdict(incident_id: int, body: VerdictIn, kind: str) -> dict[str, Any]:
        try:
            return rt.approve(incident_id, body.approver, kind, body.comment)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        except InvalidTransition as exc:
            raise HTTPException(409, detail=str(exc)) from exc

    @app.post("/v1/incidents/{incident_id}/approve", tags=["approvals"])
    def approve(incident_id: int, body: VerdictIn) -> dict[str, Any]:
        """Approve the pending remedy of an incident awaiting approval (409 otherwise)."""
        return verdict(incident_id, body, "approve")

    @app.post("/v1/incidents/{incident_id}/reject", tags=["approvals"])
    def reject(incident_id: int, body: VerdictIn) -> dict[str, Any]:
        """Reject the pending remedy: the healing ends, escalated to a human."""
        return verdict(incident_id, body, "reject")

    @app.get("/v1/audit/verify", tags=["audit"])
    def audit_verify() -> dict[str, Any]:
        """Walk the audit chain; report it intact or the first entry altered or removed."""
        return rt.store.verify_audit().as_dict()

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness and readiness: the database answers and the engine runs."""
        rt.store.count_incidents_by_state()
        return {"status": "ok", "version": __version__, "engine": rt.started}

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _incident_json(inc: Incident) -> dict[str, Any]:
    return {**inc.model_dump(mode="json"), "time_to_detect_s": inc.time_to_detect_s,
            "time_to_recover_s": inc.time_to_recover_s}
