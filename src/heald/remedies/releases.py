"""``rollback_release``: point a service's ``current`` symlink back at an earlier release and
restart the service."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from heald.config import ReleasesConfig
from heald.correlate.changes import HEALD_USER, current_release, release_names
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


class RollbackParams(RemedyParams):
    service: str = Field(min_length=1, description="a service with releases")
    to: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,200}$",
                           description="the release to go back to (default: the one before current)")


def _releases(params: RollbackParams, ctx: RemedyContext) -> ReleasesConfig:
    svc = ctx.config.services.get(params.service)
    if svc is None or svc.releases is None:
        raise RemedyNotApplicable(f"service {params.service!r} has no releases in the configuration")
    return svc.releases


def switch(releases: ReleasesConfig, name: str) -> None:
    """Point ``current`` at release ``name`` atomically (a new symlink renamed over the old,
    so a reader never sees it missing) and log it in the revisions log as heald's rollback."""
    target = releases.dir / name
    if not target.is_dir() or target.resolve().parent != releases.dir.resolve():
        raise RemedyError(f"release {name!r} is not a directory in {releases.dir}")
    tmp = releases.current.with_name(f".{releases.current.name}.heald-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, releases.current)
    with open(releases.revisions_log, "a") as log:  # Capistrano's format for a rollback
        log.write(f"{HEALD_USER} rolled back to release {name} ({datetime.now(UTC).isoformat(timespec='seconds')})\n")


@register
class RollbackRelease(Remedy[RollbackParams]):
    """Switch ``current`` to the release before it (in natural name order, as Capistrano orders
    its timestamped releases) or to ``to``, then restart the service when heald manages it.

    Guard: the snapshot is the release ``current`` named before; after a crash mid-apply,
    ``current`` naming the target release means the switch happened (a restart is repeated,
    which is safe). Undo: switch back to the snapshot's release and restart.
    """

    name = "rollback_release"
    description = "Roll a service back to its previous release (the current symlink) and restart it"
    Params = RollbackParams
    has_undo = True

    def target(self, params: RollbackParams) -> Target:
        return Target("release", params.service)

    def cannot_apply(self, params: RollbackParams, heald: HealdSelf) -> str | None:
        """A service with no ``releases`` in the configuration."""
        svc = heald.config.services.get(params.service)
        if svc is None or svc.releases is None:
            return f"rollback_release cannot act on {params.service!r}: services.{params.service}.releases is not configured"
        return None

    def touches_heald(self, params: RollbackParams, heald: HealdSelf) -> str | None:
        """A releases directory inside heald's own state."""
        svc = heald.config.services.get(params.service)
        where = svc.releases.dir if svc is not None and svc.releases is not None else None
        return heald.refuse_owned(self.target(params), where)

    def _target_release(self, params: RollbackParams, releases: ReleasesConfig, current: str) -> str:
        if params.to:
            return params.to
        names = release_names(releases)
        if current not in names or names.index(current) == 0:
            raise RemedyError(f"no release before {current!r} in {releases.dir} (releases: {', '.join(names) or 'none'})")
        return names[names.index(current) - 1]

    def snapshot(self, params: RollbackParams, ctx: RemedyContext) -> dict[str, Any] | None:
        releases = _releases(params, ctx)
        current = current_release(releases)
        return {"current": current,
                "target": self._target_release(params, releases, current) if current else params.to}

    def already_applied(self, params: RollbackParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        snap = snapshot or {}
        if snap.get("target") and current_release(_releases(params, ctx)) == snap["target"] != snap.get("current"):
            self._restart(params, ctx)
            return True
        return False

    def _restart(self, params: RollbackParams, ctx: RemedyContext) -> str:
        proc = ctx.supervisor.get(params.service)
        if proc is None:
            return " (not a managed service: not restarted)"
        return f"; restarted {params.service} as pid {proc.restart().pid}"

    def apply(self, params: RollbackParams, ctx: RemedyContext) -> RemedyResult:
        releases = _releases(params, ctx)
        current = current_release(releases)
        if current is None:
            raise RemedyError(f"{releases.current} is not a symlink to a release")
        target = self._target_release(params, releases, current)
        if target == current:
            return RemedyResult(f"{params.service} already runs release {current}{self._restart(params, ctx)}",
                                {"release": current})
        switch(releases, target)
        return RemedyResult(f"rolled {params.service} back from release {current} to {target}"
                            f"{self._restart(params, ctx)}", {"release": current})

    def undo(self, params: RollbackParams, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        releases = _releases(params, ctx)
        name = undo.get("release")
        if not name:
            raise RemedyError("no release recorded to go back to")
        if current_release(releases) != name:
            switch(releases, name)
        return RemedyResult(f"{params.service} is on release {name} again{self._restart(params, ctx)}")

