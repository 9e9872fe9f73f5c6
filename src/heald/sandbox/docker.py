"""The Docker backend: one throw-away container per run, through the ``docker`` CLI, used when a
Docker engine answers (``docker version`` reports a server).

Each run is ``docker run --rm --network none --memory M --memory-swap M --pids-limit P --ulimit
cpu/fsize/nofile/core --shm-size S --read-only --tmpfs /tmp --cap-drop ALL --security-opt
no-new-privileges --user UID:GID -v WORKDIR:WORKDIR -w CWD IMAGE COMMAND`` (there is no
way to give a run a network). The container's own cgroup limits the whole run's memory and processes;
its root filesystem is read-only, so what it can write is the sized tmpfs ``/tmp`` and
``/dev/shm`` and the bind-mounted work tree, which gets its own filesystem of ``disk_bytes``
(:mod:`heald.sandbox.disk`) as with bubblewrap (``--storage-opt size=`` would bound only the
container's own layer, and only on overlay2 over xfs with project quotas). Not exercised on
heald's CI machine, which has no Docker engine. The container's environment is the image's plus :data:`heald.sandbox.BASE_ENV` and the
caller's ``env``; heald's own environment never enters. The wall-clock timeout runs ``docker
kill`` on the container, then kills the CLI's process group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from heald.sandbox import BASE_ENV, BackendStatus, Limits, RunResult, Sandbox, SandboxError, running_as_root
from heald.sandbox._process import run_launcher
from heald.sandbox.bwrap import hand_over

if TYPE_CHECKING:
    from heald.config import SandboxConfig

PROBE_TIMEOUT_S = 10.0


class Docker(Sandbox):
    """Runs commands in a container (see the module docstring)."""

    name = "docker"

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.docker = shutil.which("docker") or "docker"
        self.user = (cfg.uid, cfg.gid) if running_as_root() else (os.getuid(), os.getgid())
        self.output_limit = cfg.output_limit_kb * 1024

    def argv(self, command: Sequence[str], *, container: str, workdir: Path, cwd: Path,
             env: Mapping[str, str], limits: Limits, read_only: Sequence[Path] = (),
             writable: Sequence[Path] = ()) -> list[str]:
        """The full ``docker run`` command line of one run (see the module docstring)."""
        n = limits.open_files
        a = [self.docker, "run", "--rm", "--name", container, "--network", "none",
             "--memory", str(limits.memory_bytes), "--memory-swap", str(limits.memory_bytes),
             "--pids-limit", str(limits.max_processes),
             "--ulimit", f"cpu={limits.cpu_seconds}:{limits.cpu_seconds}",
             "--ulimit", f"fsize={limits.file_size_bytes}:{limits.file_size_bytes}",
             "--ulimit", f"nofile={n}:{n}", "--ulimit", "core=0",
             "--shm-size", str(limits.shm_bytes),
             "--read-only", "--tmpfs", f"/tmp:rw,exec,size={limits.tmp_bytes}",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
             "--user", f"{self.user[0]}:{self.user[1]}", "--hostname", "heald-sandbox"]
        for p in [*self.cfg.read_only_paths, *read_only]:
            a += ["-v", f"{p}:{p}:ro"]
        for p in [workdir, *writable]:
            a += ["-v", f"{p}:{p}:rw"]
        a += ["-w", str(cwd)]
        for k, v in {**BASE_ENV, **env}.items():
            a += ["--env", f"{k}={v}"]
        a += [self.cfg.docker_image, *command]
        return a

    def prepare(self, path: Path) -> None:
        if running_as_root():
            hand_over(path, *self.user)

    def run(self, command: Sequence[str], *, workdir: Path, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, limits: Limits | None = None,
            read_only: Sequence[Path] = (), writable: Sequence[Path] = ()) -> RunResult:
        limits = limits or Limits.from_config(self.cfg)
        workdir = Path(workdir).resolve()
        for p in [workdir, *read_only, *writable]:
            if not Path(p).exists():
                raise SandboxError(f"cannot bind {p} into the sandbox: it does not exist")
        for p in [workdir, *writable]:
            self.prepare(Path(p))
        disk_note = self.bound_disk(workdir, limits, self.user if running_as_root() else None)
        container = f"heald-sbx-{uuid.uuid4().hex[:16]}"
        argv = self.argv(command, container=container, workdir=workdir, cwd=Path(cwd or workdir),
                         env=env or {}, limits=limits, read_only=read_only, writable=writable)

        def kill_container(_: subprocess.Popen[bytes]) -> None:
            subprocess.run([self.docker, "kill", container], capture_output=True, timeout=30, check=False)

        done = run_launcher(argv, timeout=limits.timeout_seconds, output_limit=self.output_limit,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                 **({"DOCKER_HOST": os.environ["DOCKER_HOST"]} if "DOCKER_HOST" in os.environ else {})},
                            on_timeout=kill_container)
        return RunResult(command=list(command), returncode=done.returncode, output=done.output,
                         duration_s=done.duration_s, timed_out=done.timed_out, backend=self.name,
                         truncated=done.truncated, limits=limits,
                         enforcement=f"the container's cgroup (--memory, --pids-limit); {disk_note}")


def probe(cfg: SandboxConfig) -> BackendStatus:
    """Does a Docker engine answer? Asks ``docker version`` for the server's version."""
    exe = shutil.which("docker")
    if exe is None:
        return BackendStatus("docker", False, "the docker command is not installed")
    try:
        r = subprocess.run([exe, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return BackendStatus("docker", False, f"the docker CLI is installed but no engine answered within {PROBE_TIMEOUT_S:g} s")
    except OSError as exc:
        return BackendStatus("docker", False, f"could not run {exe}: {exc}")
    version = r.stdout.strip()
    if r.returncode != 0 or not version:
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:300]
        return BackendStatus("docker", False, f"the docker CLI is installed but no engine answers: {why}")
    return BackendStatus("docker", True, f"Docker engine {version} (image {cfg.docker_image})")


__all__ = ["Docker", "SandboxError", "probe"]
