"""Silences and maintenance windows (:mod:`heald.correlate.silences`): ``GET /v1/silences``
(role viewer), ``POST /v1/silences`` and ``POST /v1/silences/{id}/expire`` (role operator).
Silences are expired, never deleted. A silence with a ``recurrence`` is a recurring maintenance
window (a cron schedule in a time zone, a window length), in effect only inside its windows."""

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
    parse_recurrence,
)
from heald.durations import parse_duration
from heald.engine import Runtime
from heald.http_limits import MAX_DB_INT, DbId, HealdRoute
from heald.models import Role, utcnow
from heald.store import NotFound


class RecurrenceIn(BaseModel):
    """A recurring maintenance window: a window of ``window`` begins at every time of the cron
    ``schedule`` read in ``timezone``."""

    model_config = ConfigDict(extra="forbid")
    schedule: str = Field(min_length=1, max_length=200,
                          description="cron: minute hour day-of-month month day-of-week, e.g. '0 2 * * 0' (Sundays "
                                      "02:00), or @daily, @weekly …")
    window: str = Field(min_length=1, max_length=50, description="how long each window lasts: 30m, 2h (1m to 7d)")
    timezone: str = Field(default="UTC", min_length=1, max_length=100,
                          description="IANA time zone the schedule is read in, e.g. Europe/Paris")

    @model_validator(mode="after")
    def _valid(self) -> RecurrenceIn:
        self.as_json()
        return self

    def as_json(self) -> dict[str, Any]:
        """The stored form (:func:`heald.correlate.silences.parse_recurrence`); ValueError naming the field."""
        try:
            seconds = parse_duration(self.window)
        except ValueError as exc:
            raise ValueError(f"recurrence.window: {exc}") from exc
        try:
            return parse_recurrence(self.schedule, seconds, self.timezone)
        except SilenceError as exc:
            raise ValueError(str(exc)) from exc


class SilenceIn(BaseModel):
    """A new silence: ``matchers`` (Alertmanager syntax, all must match), and its period: from
    ``starts_at`` (default now) to ``ends_at``, or for ``duration`` (``2h``, ``30m``). With
    ``recurrence`` it silences only inside the schedule's windows within that period."""

    model_config = ConfigDict(extra="forbid")
    matchers: list[str] = Field(min_length=1, max_length=50, description='e.g. ["service=\\"shop\\"", "alertname=~\\"High.*\\""]')
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    duration: str | None = Field(default=None, description="instead of ends_at: 30m, 2h, 1d …")
    comment: str = Field(min_length=1, max_length=5000, description="why (a maintenance, a known issue)")
    recurrence: RecurrenceIn | None = Field(default=None, description="a recurring maintenance window")

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
        """Create a silence (role operator): matching firing signals are recorded but start
        nothing. ``recurrence`` makes it a recurring maintenance window."""
        try:
            return create_silence(rt.store, body.matchers, body.end(), starts_at=body.starts_at,
                                  created_by=who.actor, comment=body.comment,
                                  recurrence=body.recurrence.as_json() if body.recurrence else None)
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
