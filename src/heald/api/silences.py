"""Silences and maintenance windows (:mod:`heald.correlate.silences`): ``GET /v1/silences``
(role viewer), ``POST /v1/silences`` and ``POST /v1/silences/{id}/expire`` (role operator).
Silences are expired, never deleted."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from heald.api.incidents import next_link
from heald.auth import Principal, require
from heald.correlate.silences import (
    MAX_LIST,
    SilenceError,
    create_silence,
    expire_silence,
    list_silences,
    parse_matchers,
)
from heald.durations import parse_duration
from heald.engine import Runtime
from heald.http_limits import MAX_DB_INT, DbId, HealdRoute
from heald.models import Role, utcnow
from heald.store import NotFound


class SilenceIn(BaseModel):
    """A new silence: ``matchers`` (Alertmanager syntax, all must match), and its window: from
    ``starts_at`` (default now) to ``ends_at``, or for ``duration`` (``2h``, ``30m``)."""

    model_config = ConfigDict(extra="forbid")
    matchers: list[str] = Field(min_length=1, max_length=50, description='e.g. ["service=\\"shop\\"", "alertname=~\\"High.*\\""]')
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    duration: str | None = Field(default=None, description="instead of ends_at: 30m, 2h, 1d …")
    comment: str = Field(min_length=1, max_length=5000, description="why (a maintenance, a known issue)")

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, v: list[str]) -> list[str]:
        try:
            parse_matchers(v)
        except SilenceError as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _window(self) -> SilenceIn:
        if (self.ends_at is None) == (self.duration is None):
            raise ValueError("give exactly one of ends_at and duration")
        return self

    def end(self) -> datetime:
        if self.ends_at is not None:
            return self.ends_at
        return (self.starts_at or utcnow()) + timedelta(seconds=parse_duration(self.duration or ""))


def _unprocessable(exc: SilenceError) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *exc.field.replace("[", ".").rstrip("]").split(".")],
                                       "msg": exc.message, "type": "value_error"}])


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["silences"], route_class=HealdRoute)

    @router.get("/v1/silences", dependencies=[Depends(require(Role.viewer))])
    def get_silences(state: Literal["pending", "active", "expired"] | None = None,
                     limit: int = Query(MAX_LIST, ge=1, le=MAX_LIST),
                     before: int | None = Query(None, ge=1, le=MAX_DB_INT, description="the id this page starts below"),
                     *, request: Request, response: Response) -> list[dict[str, Any]]:
        """Silences, newest first (expired ones too: history is kept), optionally by state; a
        full page names the next in its ``Link`` header (``rel="next"``, ``before`` the last id)."""
        rows = list_silences(rt.store, state, limit=limit, before_id=before)
        if len(rows) == limit:
            next_link(request, response, before=rows[-1]["id"], limit=limit)
        return rows

    @router.post("/v1/silences", status_code=201)
    def post_silence(body: SilenceIn, who: Principal = Depends(require(Role.operator))) -> dict[str, Any]:
        """Create a silence (role operator): matching firing signals are recorded but start nothing."""
        try:
            return create_silence(rt.store, body.matchers, body.end(), starts_at=body.starts_at,
                                  created_by=who.actor, comment=body.comment)
        except SilenceError as exc:
            raise _unprocessable(exc) from exc

    @router.post("/v1/silences/{silence_id}/expire")
    def expire(silence_id: DbId, who: Principal = Depends(require(Role.operator))) -> dict[str, Any]:
        """End a silence now (role operator); it stays listed as expired."""
        try:
            return expire_silence(rt.store, silence_id, who.actor)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    return router
