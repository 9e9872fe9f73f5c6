"""The workers sharing this database (:mod:`heald.engine.cluster`): ``GET /v1/workers`` (role
viewer). Any worker answers for all of them: the list is read from the database."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from heald.auth import require
from heald.engine import Runtime
from heald.engine.cluster import list_workers
from heald.http_limits import HealdRoute
from heald.models import Role


def routes(rt: Runtime) -> APIRouter:
    """``GET /v1/workers``: ``{"answered_by": executor id, "workers": [...]}``, each worker with
    its host, pid, version, API URL, state (running, silent: no heartbeat within
    ``cluster.heartbeat_timeout_seconds``, stopped, dead), heartbeat age in seconds, whether it
    is the leader, the probe and log leases it holds, and who recovered its healings."""
    router = APIRouter(tags=["workers"], route_class=HealdRoute)

    @router.get("/v1/workers", dependencies=[Depends(require(Role.viewer))])
    def get_workers() -> dict[str, Any]:
        """Every heald worker on this database, live ones first."""
        workers = list_workers(rt.store.engine, rt.config.cluster.heartbeat_timeout_seconds)
        return {"answered_by": rt.config.executor_id, "workers": [w.as_json() for w in workers]}

    return router
