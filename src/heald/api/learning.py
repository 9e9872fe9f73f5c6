"""Learning from outcomes: ``GET /v1/learning`` (see :mod:`heald.learn`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from heald.auth import require
from heald.engine import Runtime
from heald.http_limits import HealdRoute
from heald.learn import learned_rows
from heald.models import Role


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["learning"], route_class=HealdRoute)

    @router.get("/v1/learning", dependencies=[Depends(require(Role.viewer))])
    def learning(category: str | None = Query(None, max_length=100, description="only this incident category")
                 ) -> list[dict[str, Any]]:
        """Per incident category and remedy: attempts that healed (``successes``) and that did
        not (``failures``), and ``success_rate``, the mean of the Beta(alpha, beta) posterior
        the plan's Thompson sampling draws from. Best first within a category."""
        return learned_rows(rt.store, category)

    return router
