"""Operations: ``GET /healthz``, ``GET /metrics`` (Prometheus text format) and
``GET /v1/audit/verify``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from heald import __version__
from heald.api.metrics import registry_for
from heald.auth import require
from heald.engine import Runtime
from heald.http_limits import HealdRoute
from heald.models import Role


def routes(rt: Runtime) -> APIRouter:
    router = APIRouter(tags=["operations"], route_class=HealdRoute)
    registry = registry_for(rt.store, rt.probes, rt.cluster)

    @router.get("/v1/audit/verify", tags=["audit"], dependencies=[Depends(require(Role.viewer))])
    def audit_verify() -> dict[str, Any]:
        """Walk the audit chain and compare it with the signed checkpoints (audit.checkpoint_file,
        when it exists); report it intact or the first entry altered or removed."""
        from heald.store.checkpoints import verify_configured

        cfg = rt.config
        return verify_configured(rt.store, cfg.audit_checkpoint_file, cfg.audit_key_file).as_dict()

    @router.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and readiness: the database answers a read (which never waits for a writer,
        such as a big webhook message being stored) and the engine runs."""
        rt.store.count_incidents_by_state()
        return {"status": "ok", "version": __version__, "engine": rt.started}

    @router.get("/metrics")
    def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
