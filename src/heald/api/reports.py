"""Reports: ``GET /v1/incidents/{id}/report``, the Markdown report of one incident
(:mod:`heald.explain`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import PlainTextResponse

from heald.auth import require
from heald.engine import Runtime
from heald.explain import incident_report
from heald.http_limits import DbId, HealdRoute
from heald.jsontext import clean
from heald.models import Role
from heald.store import NotFound


class MarkdownResponse(PlainTextResponse):
    media_type = "text/markdown"


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["incidents"], route_class=HealdRoute)

    @router.get("/v1/incidents/{incident_id}/report", dependencies=[Depends(require(Role.viewer))],
                response_class=MarkdownResponse)
    def report(incident_id: DbId) -> MarkdownResponse:
        """The incident's report as Markdown (``text/markdown; charset=utf-8``): what was seen,
        the hypothesis, the decision and why, what was done, the verification, the timings and
        the audit entries. 404 for an unknown incident."""
        try:
            return MarkdownResponse(clean(incident_report(rt.store, incident_id)))
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    return router
