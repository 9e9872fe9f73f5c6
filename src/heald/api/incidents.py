"""Incidents and approvals: ``GET /v1/incidents`` (``?open=true``: the open ones, those that
need attention included), ``GET /v1/incidents/summary`` (open incidents by state),
``GET /v1/incidents/{id}`` (with the first page of its signals and timeline),
``GET /v1/incidents/{id}/signals`` and ``/timeline`` (the pages after it),
``POST /v1/incidents/{id}/approve`` and ``/reject``, and a human's actions on an open incident
(:mod:`heald.engine.attention`): ``POST /v1/incidents/{id}/retry``, ``/ack`` and ``/resolve``,
with the roles of approvals.

Paging: a list that is a JSON array (``GET /v1/incidents``) names its next page in a ``Link``
header (RFC 8288, ``rel="next"``, as GitHub's API does) and keeps its shape; the signal and
timeline pages are ``{"items": [...], "next_after": cursor | null, "total": n}``, the cursor
being the ``after`` of the next page. A bad ``limit``, ``offset`` or ``after`` is a 422 naming
it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from heald.auth import Principal, require
from heald.engine import Runtime, attention
from heald.http_limits import MAX_DB_INT, DbId, HealdRoute
from heald.models import OPEN_STATES, Incident, IncidentState, Role
from heald.store import DETAIL_SIGNALS, DETAIL_TIMELINE, InvalidTransition, NotFound

#: The largest page of signals or timeline entries one request gives.
MAX_PAGE = 1000


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approver: str | None = Field(default=None, min_length=1, max_length=200,
                                 description="who approves or rejects; with auth on it must be the token's identity "
                                             "(default), with auth off it is required")
    comment: str = Field(default="", max_length=5000)


class HumanActionIn(BaseModel):
    """Body of ``POST /v1/incidents/{id}/retry|ack|resolve``: who acts (``by``) and a comment
    (required to resolve)."""

    model_config = ConfigDict(extra="forbid")
    by: str | None = Field(default=None, min_length=1, max_length=200,
                           description="who acts; with auth on it must be the token's identity (default), with "
                                       "auth off it is required")
    comment: str = Field(default="", max_length=attention.MAX_COMMENT,
                         description="why (retry, acknowledge) or what fixed it (resolve: required)")


def incident_json(inc: Incident) -> dict[str, Any]:
    return {**inc.model_dump(mode="json"), "time_to_detect_s": inc.time_to_detect_s,
            "time_to_recover_s": inc.time_to_recover_s}


def next_link(request: Request, response: Response, **params: Any) -> None:
    """Set ``Link: <this path?query with params>; rel="next"`` on ``response``."""
    query = {**request.query_params, **{k: str(v) for k, v in params.items()}}
    response.headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["incidents"], route_class=HealdRoute)
    viewer = [Depends(require(Role.viewer))]

    @router.get("/v1/incidents", dependencies=viewer)
    def list_incidents(state: IncidentState | None = None, service: str | None = None,
                       open: bool = Query(False, description="only open incidents (those that need attention "  # noqa: A002
                                                             "included)"),
                       limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_DB_INT),
                       *, request: Request, response: Response) -> list[dict[str, Any]]:
        """Incidents, newest first, optionally only those in ``state`` or only the open ones;
        a full page names the next in its ``Link`` header (``rel="next"``)."""
        states = OPEN_STATES if open else None
        items = rt.store.list_incidents(state=state, service=service, limit=limit, offset=offset, states=states)
        if len(items) == limit:
            next_link(request, response, offset=offset + limit, limit=limit)
        return [incident_json(i) for i in items]

    @router.get("/v1/incidents/summary", dependencies=viewer)
    def summary() -> dict[str, Any]:
        """How many incidents are open (every non-terminal state), how many of them need a
        human's attention (handed over with the target still failing, or awaiting approval),
        and the count of every state."""
        counts = rt.store.count_incidents_by_state()
        by_state = {s.value: counts.get(s.value, 0) for s in IncidentState}
        return {"open": sum(by_state[s.value] for s in OPEN_STATES),
                "needs_attention": by_state[IncidentState.needs_attention.value],
                "awaiting_approval": by_state[IncidentState.awaiting_approval.value], "by_state": by_state}

    @router.get("/v1/incidents/{incident_id}", dependencies=viewer)
    def get_incident(incident_id: DbId,
                     signals_limit: int = Query(DETAIL_SIGNALS, ge=0, le=MAX_PAGE,
                                                description="how many of its first signals to include"),
                     timeline_limit: int = Query(DETAIL_TIMELINE, ge=0, le=MAX_PAGE,
                                                 description="how many of its first timeline entries to include"),
                     ) -> dict[str, Any]:
        """One incident with its diagnoses, plan, decisions, actions, verifications, and the
        first ``signals_limit`` signals and ``timeline_limit`` timeline entries (oldest first);
        ``signals_page`` and ``timeline_page`` give ``{"total", "limit", "next_after"}``, the
        ``after`` of ``/signals`` and ``/timeline`` for the rest (null: all are included)."""
        try:
            return rt.store.incident_detail(incident_id, signals_limit=signals_limit, timeline_limit=timeline_limit)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    @router.get("/v1/incidents/{incident_id}/signals", dependencies=viewer)
    def incident_signals(incident_id: DbId,
                         after: int = Query(0, ge=0, le=MAX_DB_INT, description="the signal id this page starts after"),
                         limit: int = Query(100, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
        """One page of the incident's signals, oldest first: ``{"items", "next_after", "total"}``."""
        try:
            rt.store.get_incident(incident_id)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        items, next_after = rt.store.signals_page(incident_id, after_id=after, limit=limit)
        return {"items": [s.model_dump(mode="json") for s in items], "next_after": next_after,
                "total": rt.store.count_signals(incident_id)}

    @router.get("/v1/incidents/{incident_id}/timeline", dependencies=viewer)
    def incident_timeline(incident_id: DbId,
                          after: int = Query(0, ge=0, le=MAX_DB_INT, description="the audit seq this page starts after"),
                          limit: int = Query(100, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
        """One page of the incident's timeline (its audit entries in order):
        ``{"items", "next_after", "total"}``."""
        try:
            rt.store.get_incident(incident_id)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        entries = rt.store.audit_entries(incident_id=incident_id, after_seq=after, limit=limit + 1)
        return {"items": [e.model_dump(mode="json") for e in entries[:limit]],
                "next_after": entries[limit - 1].seq if len(entries) > limit else None,
                "total": rt.store.count_audit_entries(incident_id)}

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

    def acting(body: HumanActionIn, who: Principal) -> str:
        """The audit actor of a human's action: the token's identity, or the ``by`` of the body
        with auth off."""
        if who.authenticated:
            if body.by is not None and body.by != who.identity:
                raise HTTPException(403, detail=f"by: you are authenticated as {who.identity} and cannot act as {body.by}")
            return who.actor
        if body.by is None:
            raise HTTPException(422, detail=[{"loc": ["body", "by"], "type": "missing",
                                              "msg": "field required when api.auth is false (no token names you)"}])
        return f"user:{body.by}"

    def human(incident_id: int, body: HumanActionIn, who: Principal, action: str) -> dict[str, Any]:
        actor = acting(body, who)
        try:
            if action == "retry":
                return attention.retry(rt.store, incident_id, actor, body.comment, rt.send)
            if action == "ack":
                return attention.acknowledge(rt.store, incident_id, actor, body.comment)
            return attention.resolve(rt.store, incident_id, actor, body.comment, rt.send)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc
        except InvalidTransition as exc:
            raise HTTPException(409, detail=str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(422, detail=[{"loc": ["body", "comment"], "type": "value_error",
                                              "msg": str(exc)}]) from exc

    @router.post("/v1/incidents/{incident_id}/retry", tags=["approvals"])
    def retry(incident_id: DbId, body: HumanActionIn, who: Principal = Depends(require(Role.approver))) -> dict[str, Any]:
        """Heal an incident that needs attention again, with a new attempt budget (role
        approver; 409 when it does not need attention)."""
        return human(incident_id, body, who, "retry")

    @router.post("/v1/incidents/{incident_id}/ack", tags=["approvals"])
    def ack(incident_id: DbId, body: HumanActionIn, who: Principal = Depends(require(Role.approver))) -> dict[str, Any]:
        """Acknowledge an open incident: you are on it, heald stops reminding the channels about
        its current hand-over (role approver; 409 when it has ended)."""
        return human(incident_id, body, who, "ack")

    @router.post("/v1/incidents/{incident_id}/resolve", tags=["approvals"])
    def resolve(incident_id: DbId, body: HumanActionIn, who: Principal = Depends(require(Role.approver))) -> dict[str, Any]:
        """Close an open incident as resolved by you (``comment``: what fixed it, required);
        its outcome is not a heal by heald (role approver; 409 when it has ended or heald is
        diagnosing it or applying a remedy right now)."""
        return human(incident_id, body, who, "resolve")

    return router
