"""The kill switch (:mod:`heald.pause`): ``GET /v1/pause`` (role viewer: whether heald is
paused, why, by whom, since when), ``POST /v1/pause`` and ``POST /v1/resume`` (role operator:
stop or resume every automatic action of every heald worker on the database; audited with the
caller's identity)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from heald import pause
from heald.auth import Principal, require
from heald.engine import Runtime, attention
from heald.http_limits import HealdRoute
from heald.models import Role


class PauseIn(BaseModel):
    """Body of ``POST /v1/pause``: ``{"reason": str}`` (1–MAX_REASON characters, not blank)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=pause.MAX_REASON, pattern=r"\S",
                        description="why every automatic action stops (e.g. 'deploy freeze'); required")


class ResumeIn(BaseModel):
    """Body of ``POST /v1/resume``: ``{"reason": str}`` (optional, at most MAX_REASON characters)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=pause.MAX_REASON, description="why it is safe to act again")


def routes(rt: Runtime) -> APIRouter:
    """The pause switch: ``GET /v1/pause`` (viewer), ``POST /v1/pause`` and ``POST /v1/resume``
    (operator); 409 when already paused / not paused, 422 naming the field for a bad body."""
    router = APIRouter(tags=["pause"], route_class=HealdRoute)

    @router.get("/v1/pause", dependencies=[Depends(require(Role.viewer))])
    def get_pause() -> dict[str, Any]:
        """Whether heald is paused: ``paused``, ``reason``, ``actor``, ``since`` (ISO 8601 UTC)."""
        return pause.state(rt.store).to_json()

    @router.post("/v1/pause")
    def post_pause(body: PauseIn, who: Principal = Depends(require(Role.operator))) -> dict[str, Any]:
        """Stop every automatic action at once (role operator). Incidents are still opened and
        diagnosed; their remedies wait for a resume."""
        try:
            return pause.pause(rt.store, who.actor, body.reason).to_json()
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from exc

    @router.post("/v1/resume")
    def post_resume(body: ResumeIn | None = None, who: Principal = Depends(require(Role.operator))) -> dict[str, Any]:
        """Resume automatic actions (role operator); 409 when heald is not paused."""
        try:
            state = pause.resume(rt.store, who.actor, body.reason if body else "").to_json()
        except ValueError as exc:
            code = 409 if "not paused" in str(exc) else 422
            raise HTTPException(code, detail=str(exc)) from exc
        attention.wake_after_resume(rt.store, rt.send)  # the waiting healings ask the gate again now
        return state

    return router
