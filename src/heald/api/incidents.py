"""Incidents and approvals: ``GET /v1/incidents``, ``GET /v1/incidents/{id}`` (with its
timeline), ``POST /v1/incidents/{id}/approve`` and ``/reject``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from heald.auth import Principal, require
from heald.engine import Runtime
from heald.http_limits import MAX_DB_INT, DbId, HealdRoute
from heald.models import Incident, IncidentState, Role
from heald.store import InvalidTransition, NotFound


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approver: str | None = Field(default=None, min_length=1, max_length=200,
                                 description="who approves or rejects; with auth on it must be the token's identity "
                                             "(default), with auth off it is required")
    comment: str = Field(default="", max_length=5000)


def incident_json(inc: Incident) -> dict[str, Any]:
    return {**inc.model_dump(mode="json"), "time_to_detect_s": inc.time_to_detect_s,
            "time_to_recover_s": inc.time_to_recover_s}


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["incidents"], route_class=HealdRoute)
    viewer = [Depends(require(Role.viewer))]

    @router.get("/v1/incidents", dependencies=viewer)
    def list_incidents(state: IncidentState | None = None, service: str | None = None,
                       limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_DB_INT)) -> list[dict[str, Any]]:
        """Incidents, newest first, optionally only those in ``state``."""
        return [incident_json(i) for i in rt.store.list_incidents(state=state, service=service, limit=limit, offset=offset)]

    @router.get("/v1/incidents/{incident_id}", dependencies=viewer)
    def get_incident(incident_id: DbId) -> dict[str, Any]:
        """One incident with its signals, diagnoses, plan, decisions, actions, verifications and timeline."""
        try:
            return rt.store.incident_detail(incident_id)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    def verdict(incident_id: int, body: VerdictIn, kind: str, who: Principal) -> dict[str, Any]:
        if who.authenticated:
            if body.approver is not None and body.approver != who.identity:
                raise HTTPException(403, detail=f"approver: you are authenticated as {who.identity} and cannot "
                                                f"give a verdict as {body.approver}")
            approver = who.identity
        elif body.approver is None:
            raise HTTPException(422, detail=[{"loc": ["body", "approver"], "type": "missing",
                                              "msg": "field required when api.auth is false (no token names you)"}])
        else:
            approver = body.approver
        try:
            return rt.approve(incident_id, approver, kind, body.comment)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        except InvalidTransition as exc:
            raise HTTPException(409, detail=str(exc)) from exc

    @router.post("/v1/incidents/{incident_id}/approve", tags=["approvals"])
    def approve(incident_id: DbId, body: VerdictIn, who: Principal = Depends(require(Role.approver))) -> dict[str, Any]:
        """Approve the pending remedy of an incident awaiting approval (409 otherwise; role
        approver). An identity counts once however often it approves, and identities with one
        root identity (one human, :mod:`heald.auth`) count once together."""
        return verdict(incident_id, body, "approve", who)

    @router.post("/v1/incidents/{incident_id}/reject", tags=["approvals"])
    def reject(incident_id: DbId, body: VerdictIn, who: Principal = Depends(require(Role.approver))) -> dict[str, Any]:
        """Reject the pending remedy: the healing ends, escalated to a human (role approver)."""
        return verdict(incident_id, body, "reject", who)

    return router
