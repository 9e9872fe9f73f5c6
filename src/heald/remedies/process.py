"""``restart_process``: restart a managed service's process."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field

from heald.remedies.base import (
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyNotApplicable,
    RemedyParams,
    RemedyResult,
    Target,
    register,
)
from heald.supervise import BackingOff, StartFailed


class RestartParams(RemedyParams):
    service: str = Field(min_length=1, description="a managed service (services.<name> with a command)")


@register
class RestartProcess(Remedy[RestartParams]):
    """Stop the service's process group (SIGTERM, then SIGKILL after the service's
    ``stop_timeout_seconds``) and start it again. A new process that exits within the
    service's ``start_period_seconds`` fails the action (RemedyError with its exit status and
    last output lines); after such exits the restart backs off exponentially.

    Guard: the snapshot is the process instance (pid, start time) before restarting; after a
    crash mid-apply, a running instance that differs from it means the restart happened.
    """

    name = "restart_process"
    description = "Restart a managed service's process"
    Params = RestartParams

    def target(self, params: RestartParams) -> Target:
        return Target("service", params.service)

    def touches_heald(self, params: RestartParams, heald: HealdSelf) -> str | None:
        """heald's own process (or its parent), or a service whose probes check heald's API."""
        target = self.target(params)
        proc = heald.supervisor.get(params.service) if heald.supervisor is not None else None
        ident = proc.identity() if proc is not None else None
        if ident is not None and ident.pid in (os.getpid(), os.getppid()):
            return f"refused: {target} is heald's own process (pid {ident.pid})"
        svc = heald.config.services.get(params.service)
        for probe in svc.probes if svc is not None else []:
            parts = urlsplit(probe.url) if probe.url else None
            host, port = (parts.hostname, parts.port) if parts else (probe.host, probe.port)
            if heald.is_own_address(host, port):
                return f"refused: {target} is heald's own API (its probe checks port {port})"
        return None

    def cannot_apply(self, params: RestartParams, heald: HealdSelf) -> str | None:
        """A service heald does not manage (not under ``services`` with a ``command``)."""
        svc = heald.config.services.get(params.service)
        if svc is None or not svc.command:
            return (f"restart_process cannot act on {params.service!r}: heald does not manage it "
                    f"(services.{params.service}.command is not configured)")
        return None

    def _proc(self, params: RestartParams, ctx: RemedyContext) -> Any:
        proc = ctx.supervisor.get(params.service)
        if proc is None:
            raise RemedyNotApplicable(f"service {params.service!r} is not managed by heald (no command configured)")
        return proc

    def snapshot(self, params: RestartParams, ctx: RemedyContext) -> dict[str, Any] | None:
        ident = self._proc(params, ctx).identity()
        return {"instance": ident.as_dict() if ident else None}

    def already_applied(self, params: RestartParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        ident = self._proc(params, ctx).identity()
        before = (snapshot or {}).get("instance")
        return ident is not None and ident.as_dict() != before

    def apply(self, params: RestartParams, ctx: RemedyContext) -> RemedyResult:
        proc = self._proc(params, ctx)
        ident = proc.identity()
        if ident is not None and ident.pid == os.getpid():
            raise RemedyError("refusing to restart heald itself")
        before = proc.exit_description()
        try:
            new = proc.restart_checked()
        except (StartFailed, BackingOff) as exc:
            raise RemedyError(f"restart of {params.service} did not take: {exc}") from exc
        return RemedyResult(f"restarted {params.service}: was {before}; now pid {new.pid}")
