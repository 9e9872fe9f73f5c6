"""Containers through the Docker Engine API, with the ``docker`` SDK (docker-py).

The same API is served by Docker and by podman (``podman system service``), so heald adopts a
container of either engine: :func:`inspect` reads its state (``State.Status``, ``State.Health``,
``State.OOMKilled``, ``RestartCount``: the API's ``GET /containers/{id}/json``), :func:`logs_tail`
the last lines of its log (``GET /containers/{id}/logs``), :func:`restart` restarts it
(``POST /containers/{id}/restart``) and :func:`recreate` replaces it by a container with the
same configuration on another image (a rollback). Every call is bounded by the target's
``timeout_seconds``; every failure is a :class:`~heald.targets.TargetError` naming the target.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions

from heald.config import ContainerConfig
from heald.targets import TargetError

#: The Docker Engine API version heald speaks: Docker (since 20.10) and podman (since 3) serve it,
#: and naming it spares a version request per call.
API_VERSION = "1.41"


@dataclass(frozen=True)
class ContainerState:
    """A container as the engine reports it. ``status`` is the engine's word (``running``,
    ``exited``, ``restarting``, ``paused``, ``created``, ``dead``); ``health`` the health
    check's status (``healthy``, ``unhealthy``, ``starting``) or None without a health check;
    ``image`` the reference it was created from (``Config.Image``) and ``image_id`` the image's
    id; ``started_at`` the engine's timestamp text of its last start; ``pid`` its main process
    as the engine's host sees it (0: not running)."""

    id: str
    name: str
    image: str
    image_id: str
    status: str
    health: str | None
    oom_killed: bool
    exit_code: int
    restart_count: int
    started_at: str
    error: str
    pid: int = 0

    @property
    def running(self) -> bool:
        return self.status == "running"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``running (healthy), image web:2, 3 restarts`` or ``exited with code 137
        (OOMKilled)``."""
        if self.running:
            text = "running" + (f" ({self.health})" if self.health else "")
        else:
            text = f"{self.status} with code {self.exit_code}" if self.status in ("exited", "dead") else self.status
            if self.error:
                text += f" ({self.error})"
        if self.oom_killed:
            text += " (OOMKilled)"
        return f"{text}, image {self.image}, {self.restart_count} restarts"


@contextmanager
def client(cfg: ContainerConfig) -> Iterator[docker.DockerClient]:
    """A Docker SDK client for the container's engine (``docker_host``), closed afterwards."""
    c = docker.DockerClient(base_url=cfg.docker_host, version=API_VERSION, timeout=max(1, round(cfg.timeout_seconds)))
    try:
        yield c
    finally:
        c.close()


def _fail(cfg: ContainerConfig, what: str, exc: Exception) -> TargetError:
    if isinstance(exc, docker.errors.NotFound):
        return TargetError(f"container {cfg.name} on {cfg.docker_host}: {what}: not found")
    if isinstance(exc, docker.errors.APIError):
        return TargetError(f"container {cfg.name} on {cfg.docker_host}: {what}: {exc.explanation or exc}"[:1000])
    return TargetError(f"container {cfg.name}: {what}: the engine at {cfg.docker_host} did not answer "
                       f"({exc.__class__.__name__}: {exc})"[:1000])


_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def state_of(attrs: dict[str, Any]) -> ContainerState:
    """The :class:`ContainerState` of an inspect answer (``GET /containers/{id}/json``)."""
    st = attrs.get("State") or {}
    status = st.get("Status") or "unknown"
    if status in ("stopped", "configured"):  # podman's own words leak through its compat API
        status = {"stopped": "exited", "configured": "created"}[status]
    health = (st.get("Health") or {}).get("Status") or None
    return ContainerState(id=attrs.get("Id", ""), name=str(attrs.get("Name", "")).lstrip("/"),
                          image=(attrs.get("Config") or {}).get("Image") or "", image_id=attrs.get("Image") or "",
                          status=status, health=health, oom_killed=bool(st.get("OOMKilled")),
                          exit_code=int(st.get("ExitCode") or 0), restart_count=int(attrs.get("RestartCount") or 0),
                          started_at=str(st.get("StartedAt") or ""), error=str(st.get("Error") or ""),
                          pid=int(st.get("Pid") or 0))


def inspect(cfg: ContainerConfig) -> ContainerState:
    """The container's state now. Raises TargetError (unknown container, engine unreachable)."""
    try:
        with client(cfg) as c:
            return state_of(c.api.inspect_container(cfg.name))
    except _ERRORS as exc:
        raise _fail(cfg, "inspect", exc) from exc


def logs_tail(cfg: ContainerConfig, lines: int | None = None) -> list[str]:
    """The last ``lines`` (default ``log_lines``) lines of the container's log, stdout and
    stderr interleaved as the engine stored them, each with the engine's timestamp. Raises
    TargetError."""
    try:
        with client(cfg) as c:
            raw = c.api.logs(cfg.name, stdout=True, stderr=True, tail=lines or cfg.log_lines, timestamps=True)
    except _ERRORS as exc:
        raise _fail(cfg, "logs", exc) from exc
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return [line for line in text.splitlines() if line.strip()]


def _wait_running(c: docker.DockerClient, cfg: ContainerConfig, ident: str, started_after: str | None) -> ContainerState:
    """Wait ``start_period_seconds``, then the container's state: it must be running, started
    after ``started_after`` (a start the engine made since) and not restarted meanwhile."""
    first = state_of(c.api.inspect_container(ident))
    time.sleep(cfg.start_period_seconds)
    now = state_of(c.api.inspect_container(ident))
    if not now.running or (started_after is not None and now.started_at == started_after) \
            or now.started_at != first.started_at:
        raise TargetError(f"container {cfg.name} did not stay up for {cfg.start_period_seconds:g} s: {now.describe()}")
    return now


def restart(cfg: ContainerConfig) -> tuple[ContainerState, ContainerState]:
    """Restart the container (SIGTERM, SIGKILL after ``stop_timeout_seconds``, start) and check
    that it stays up for ``start_period_seconds``. Returns its state before and after. Raises
    TargetError with its state when it does not stay up."""
    try:
        with client(cfg) as c:
            before = state_of(c.api.inspect_container(cfg.name))
            c.api.restart(cfg.name, timeout=max(1, round(cfg.stop_timeout_seconds)))
            after = _wait_running(c, cfg, cfg.name, before.started_at if before.running else None)
    except _ERRORS as exc:
        raise _fail(cfg, "restart", exc) from exc
    return before, after


def previous_image(cfg: ContainerConfig, current: ContainerState) -> str | None:
    """The image the container most likely ran before its current one: among the engine's
    images of the same repository (``web`` of ``web:2``), the newest created before the
    current image; None when there is none."""
    repo = current.image.rsplit(":", 1)[0] if ":" in current.image.rsplit("/", 1)[-1] else current.image
    try:
        with client(cfg) as c:
            images = c.api.images(name=repo)
    except _ERRORS as exc:
        raise _fail(cfg, "list images", exc) from exc
    created = {i["Id"]: i.get("Created", 0) for i in images}
    now = next((t for i, t in created.items() if i.removeprefix("sha256:") == current.image_id.removeprefix("sha256:")),
               None)
    older = [i for i in images if i["Id"].removeprefix("sha256:") != current.image_id.removeprefix("sha256:")
             and (now is None or i.get("Created", 0) <= now) and i.get("RepoTags")]
    if not older:
        return None
    best = max(older, key=lambda i: i.get("Created", 0))
    return str(best["RepoTags"][0])


def _host_config(hc: dict[str, Any]) -> dict[str, Any]:
    """An inspected ``HostConfig`` made fit to create a container with again: podman reports
    ulimits by their kernel names (``RLIMIT_NOFILE``), the API takes ``nofile``."""
    out = dict(hc)
    out["Ulimits"] = [dict(u, Name=str(u.get("Name", "")).removeprefix("RLIMIT_").lower()) for u in hc.get("Ulimits") or []]
    return out


def recreate(cfg: ContainerConfig, image: str) -> tuple[ContainerState, ContainerState]:
    """Replace the container by one with the same configuration (command, entrypoint,
    environment, labels, working directory, user, health check, exposed ports, anonymous
    volumes, host configuration: mounts, network mode, port bindings, limits, restart policy)
    on ``image``, under the same name. The image
    must be on the engine already (heald pulls nothing).

    The old container is stopped and renamed aside first; if the new one does not stay up for
    ``start_period_seconds`` it is removed and the old one put back and started again, and
    TargetError is raised. Returns the old and the new container's states."""
    try:
        with client(cfg) as c:
            try:
                c.api.inspect_image(image)
            except docker.errors.NotFound:
                raise TargetError(f"container {cfg.name}: image {image!r} is not on the engine at {cfg.docker_host} "
                                  "(heald pulls nothing)") from None
            attrs = c.api.inspect_container(cfg.name)
            old = state_of(attrs)
            conf = attrs.get("Config") or {}
            aside = f"{old.name}-heald-replaced-{old.id[:12]}"
            c.api.stop(old.id, timeout=max(1, round(cfg.stop_timeout_seconds)))
            c.api.rename(old.id, aside)
            new_id: str | None = None
            try:
                created = c.api.create_container(
                    image=image, command=conf.get("Cmd") or None, entrypoint=conf.get("Entrypoint") or None,
                    environment=conf.get("Env") or None, labels=conf.get("Labels") or None,
                    working_dir=conf.get("WorkingDir") or None, user=conf.get("User") or None,
                    healthcheck=conf.get("Healthcheck") or None, stop_signal=conf.get("StopSignal") or None,
                    tty=bool(conf.get("Tty")), name=old.name, host_config=_host_config(attrs.get("HostConfig") or {}),
                    ports=list(conf.get("ExposedPorts") or {}) or None, volumes=list(conf.get("Volumes") or {}) or None)
                new_id = str(created["Id"])
                c.api.start(new_id)
                new = _wait_running(c, cfg, new_id, None)
            except (TargetError, *_ERRORS) as exc:
                if new_id is not None:
                    c.api.remove_container(new_id, force=True)
                c.api.rename(old.id, old.name)
                c.api.start(old.id)
                if isinstance(exc, TargetError):
                    raise TargetError(f"{exc}; the old container (image {old.image}) was put back") from exc
                raise TargetError(f"container {cfg.name}: recreating it on {image} failed ({exc}); the old container "
                                  f"(image {old.image}) was put back"[:1000]) from exc
            c.api.remove_container(old.id, force=True)
    except TargetError:
        raise
    except _ERRORS as exc:
        raise _fail(cfg, "recreate", exc) from exc
    return old, new

