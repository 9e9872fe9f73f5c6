"""``restart_process``: restart a managed service's process."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from heald.remedies import Remedy, RemedyContext, RemedyError, RemedyParams, RemedyResult, register


class RestartParams(RemedyParams):
    service: str = Field(min_length=1, description="a managed service (services.<name> with a command)")


@register
class RestartProcess(Remedy):
    """Stop the service's process group (SIGTERM, then SIGKILL after the service's
    ``stop_timeout_seconds``) and start it again.

    Guard: the snapshot is the process instance (pid, start time) before restarting; after a
    crash mid-apply, a running instance that differs from it means the restart happened.
    """

    name = "restart_process"
    description = "Restart a managed service's process"
    Params = RestartParams

    def target(self, params: RestartParams) -> str:  # type: ignore[override]
        return f"service:{params.service}"

    def _proc(self, params: RestartParams, ctx: RemedyContext) -> Any:
        proc = ctx.supervisor.get(params.service)
        if proc is None:
            raise RemedyError(f"service {params.service!r} is not managed by heald (no command configured)")
        return proc

    def snapshot(self, params: RestartParams, ctx: RemedyContext) -> dict[str, Any] | None:  # type: ignore[override]
        ident = self._proc(params, ctx).identity()
        return {"instance": ident.as_dict() if ident else None}

    def already_applied(self, params: RestartParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:  # type: ignore[override]
        ident = self._proc(params, ctx).identity()
        before = (snapshot or {}).get("instance")
        return ident is not None and ident.as_dict() != before

    def apply(self, params: RestartParams, ctx: RemedyContext) -> RemedyResult:  # type: ignore[override]
        proc = self._proc(params, ctx)
        ident = proc.identity()
        if ident is not None and ident.pid == os.getpid():
            raise RemedyError("refusing to restart heald itself")
        before = proc.exit_description()
        new = proc.restart()
        return RemedyResult(f"restarted {params.service}: was {before}; now pid {new.pid}")
