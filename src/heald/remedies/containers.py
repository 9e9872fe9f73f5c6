"""``restart_container`` and ``rollback_container_image``: containers heald adopted by
reference (``containers.<name>``), through the Docker Engine API (:mod:`heald.targets.containers`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from heald.config import TARGET_KEY_PATTERN, ContainerConfig
from heald.remedies.base import (
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyParams,
    RemedyResult,
    Target,
    register,
)
from heald.targets import TargetError
from heald.targets import containers as ct

#: An image reference as the Docker API takes it (``registry:5000/team/web:2``,
#: ``web@sha256:…``, an image id): no spaces, no shell metacharacters, no leading ``-``.
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,254}$"


def _container(ctx: RemedyContext, key: str) -> ContainerConfig:
    cfg = ctx.config.containers.get(key)
    if cfg is None:
        known = ", ".join(sorted(ctx.config.containers)) or "none configured"
        raise RemedyError(f"container {key!r} is not declared under containers (declared: {known})")
    return cfg


def own_container_ids() -> set[str]:
    """Container ids heald's own process may run in: the 64-hex ids in /proc/self/cgroup
    (Docker's ``/docker/<id>``, podman's ``libpod-<id>.scope``), in the sources of the files the
    engine mounts over /etc/hostname, /etc/hosts and /etc/resolv.conf (/proc/self/mountinfo:
    ``…/containers/<id>/hostname``, ``…/overlay-containers/<id>/userdata/hosts``), and the host
    name when it is a 12-hex id prefix; empty on a host. Best effort: a container with a private
    cgroup namespace, its own host name and those files not mounted by the engine hides all."""
    import re

    hexid = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
    ids: set[str] = set()
    try:
        ids.update(hexid.findall(Path("/proc/self/cgroup").read_text()))
    except OSError:
        pass
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            # fields[3] is the mount's root in its source, fields[4] where it is mounted here
            if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
                ids.update(hexid.findall(fields[3]))
    except OSError:
        pass
    import socket

    host = socket.gethostname()
    if re.fullmatch(r"[0-9a-f]{12}", host):
        ids.add(host)
    return ids


def _refuse_own(key: str, cfg: ContainerConfig | None, heald: HealdSelf) -> str | None:
    """The refusal when container ``key`` is the one heald runs in (by id, or its main process
    is heald's), None otherwise or when its engine cannot tell."""
    if cfg is None:
        return None
    try:
        st = ct.inspect(cfg)
    except TargetError:
        return None
    own = own_container_ids()
    if st.id in own or st.id[:12] in own or (st.pid and st.pid in (os.getpid(), os.getppid())):
        return f"refused: container:{key} ({cfg.name}) is the container heald itself runs in"
    return None


class RestartContainerParams(RemedyParams):
    """restart_container's parameters: the name of a configured container (``containers.<name>``)."""

    container: str = Field(pattern=TARGET_KEY_PATTERN, description="a container of containers.<name>")


@register
class RestartContainer(Remedy[RestartContainerParams]):
    """Restart a container through the Docker Engine API (``POST /containers/{id}/restart``:
    SIGTERM, SIGKILL after ``stop_timeout_seconds``, start) and require it to stay running for
    ``start_period_seconds``; otherwise the action fails with its state (exit code, OOMKilled).

    Guard: the snapshot is the container's id and last start time; after a crash mid-apply, the
    same container running with a later start means the restart happened. A restart is also
    safe to repeat.
    """

    name = "restart_container"
    description = "Restart a container through the Docker Engine API"
    Params = RestartContainerParams

    def target(self, params: RestartContainerParams) -> Target:
        return Target("container", params.container)

    def touches_heald(self, params: RestartContainerParams, heald: HealdSelf) -> str | None:
        """The container heald itself runs in."""
        return _refuse_own(params.container, heald.config.containers.get(params.container), heald)

    def snapshot(self, params: RestartContainerParams, ctx: RemedyContext) -> dict[str, Any] | None:
        try:
            return {"container": ct.inspect(_container(ctx, params.container)).as_dict()}
        except TargetError as exc:
            return {"container": None, "error": str(exc)}

    def already_applied(self, params: RestartContainerParams, ctx: RemedyContext,
                        snapshot: dict[str, Any] | None) -> bool:
        before = (snapshot or {}).get("container")
        if not before:
            return False
        try:
            now = ct.inspect(_container(ctx, params.container))
        except TargetError:
            return False
        return now.running and now.id == before["id"] and now.started_at != before["started_at"]

    def apply(self, params: RestartContainerParams, ctx: RemedyContext) -> RemedyResult:
        cfg = _container(ctx, params.container)
        try:
            before, after = ct.restart(cfg)
        except TargetError as exc:
            raise RemedyError(f"restart of container {params.container} did not take: {exc}") from exc
        return RemedyResult(f"restarted container {params.container} ({cfg.name}): was {before.describe()}; "
                            f"now {after.describe()}")


class RollbackContainerParams(RemedyParams):
    """rollback_container_image's parameters: a configured container and, optionally, the image
    reference to go back to (default: the previous image heald saw it run)."""

    container: str = Field(pattern=TARGET_KEY_PATTERN, description="a container of containers.<name>")
    to: str | None = Field(default=None, pattern=IMAGE_PATTERN,
                           description="the image to go back to (default: the newest image of the same repository "
                                       "created before the current one)")


@register
class RollbackContainerImage(Remedy[RollbackContainerParams]):
    """Recreate a container with the same configuration on its previous image: ``to``, else the
    newest image of the same repository created before the current one
    (:func:`heald.targets.containers.previous_image`). The old container is stopped and kept
    aside until the new one has stayed up for ``start_period_seconds``; if it does not, the old
    one is put back and the action fails. The image must already be on the engine.

    Guard: the snapshot is the container (id, image) before; after a crash mid-apply, another
    container of that name running the target image means the rollback happened. Undo:
    recreate it again on the image it ran before (recorded with the action).
    """

    name = "rollback_container_image"
    description = "Recreate a container with the same configuration on its previous image"
    Params = RollbackContainerParams
    has_undo = True

    def target(self, params: RollbackContainerParams) -> Target:
        return Target("container", params.container)

    def touches_heald(self, params: RollbackContainerParams, heald: HealdSelf) -> str | None:
        """The container heald itself runs in."""
        return _refuse_own(params.container, heald.config.containers.get(params.container), heald)

    def _image(self, params: RollbackContainerParams, cfg: ContainerConfig, current: ct.ContainerState) -> str:
        if params.to:
            return params.to
        image = ct.previous_image(cfg, current)
        if image is None:
            raise RemedyError(f"container {params.container} runs {current.image}; the engine has no older image of "
                              "the same repository to roll back to (give 'to')")
        return image

    def snapshot(self, params: RollbackContainerParams, ctx: RemedyContext) -> dict[str, Any] | None:
        cfg = _container(ctx, params.container)
        try:
            st = ct.inspect(cfg)
            return {"container": st.as_dict(), "to": self._image(params, cfg, st)}
        except (TargetError, RemedyError) as exc:
            return {"container": None, "error": str(exc)}

    def already_applied(self, params: RollbackContainerParams, ctx: RemedyContext,
                        snapshot: dict[str, Any] | None) -> bool:
        before, to = (snapshot or {}).get("container"), (snapshot or {}).get("to")
        if not before or not to:
            return False
        try:
            now = ct.inspect(_container(ctx, params.container))
        except TargetError:
            return False
        return now.id != before["id"] and now.image == to and now.running

    def apply(self, params: RollbackContainerParams, ctx: RemedyContext) -> RemedyResult:
        cfg = _container(ctx, params.container)
        try:
            current = ct.inspect(cfg)
            image = self._image(params, cfg, current)
            if image == current.image:
                raise RemedyError(f"container {params.container} already runs {image}")
            old, new = ct.recreate(cfg, image)
        except TargetError as exc:
            raise RemedyError(f"rollback of container {params.container} did not take: {exc}") from exc
        return RemedyResult(f"recreated container {params.container} ({cfg.name}) on {new.image} "
                            f"(was {old.image}, {old.describe()}); now {new.describe()}",
                            undo={"image": old.image, "container_id": new.id})

    def undo(self, params: RollbackContainerParams, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        cfg = _container(ctx, params.container)
        try:
            old, new = ct.recreate(cfg, str(undo["image"]))
        except (TargetError, KeyError) as exc:
            raise RemedyError(f"undo of the rollback of container {params.container} failed: {exc}") from exc
        return RemedyResult(f"recreated container {params.container} on {new.image} again (was {old.image})")
