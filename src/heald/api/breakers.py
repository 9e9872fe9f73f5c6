"""Circuit breakers and target leases (:mod:`heald.budgets`): ``GET /v1/breakers``,
``POST /v1/breakers/reset`` (role operator: auto-remediation on again for a target),
``GET /v1/leases``. Breakers are reset, never deleted; the audit log keeps their history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from heald import budgets
from heald.auth import Principal, require
from heald.engine import Runtime
from heald.http_limits import HealdRoute
from heald.models import Role
from heald.store import NotFound


class BreakerResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=1, max_length=500, description="what the remedies act on, e.g. service:shop")
    comment: str = Field(default="", max_length=5000, description="why it is safe to heal it automatically again")


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["budgets"], route_class=HealdRoute)
    viewer = [Depends(require(Role.viewer))]

    @router.get("/v1/breakers", dependencies=viewer)
    def list_breakers() -> list[dict[str, Any]]:
        """Every target's circuit breaker: ``state`` open (auto-remediation off) or closed, its
        consecutive failed verifications, who reset it last."""
        return budgets.breakers(rt.store)

    @router.post("/v1/breakers/reset")
    def reset_breaker(body: BreakerResetIn, who: Principal = Depends(require(Role.operator))) -> dict[str, Any]:
        """Close a target's breaker (role operator); 404 for a target with none."""
        try:
            return budgets.reset_breaker(rt.store, body.target, who.actor, body.comment)
        except NotFound as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    @router.get("/v1/leases", dependencies=viewer)
    def list_leases() -> list[dict[str, Any]]:
        """The targets being healed now, by which incident and worker, until when."""
        return budgets.leases(rt.store)

    return router
