"""The sandbox: the only place where heald runs untrusted work (a repository's dependency
install, its tests, a candidate fix).

A sandbox run sees a read-only system (``/usr``, ``/etc``), a private ``/proc`` and ``/dev``, a
size-limited private ``/tmp``, and exactly one writable directory: the work tree it is given
(plus any extra paths the caller binds, read-only or writable). Its environment is cleared: it
gets only ``PATH``, ``HOME=/tmp``, ``LANG`` and what the caller passes explicitly, so no token of
heald's reaches it. It has no network that reaches the host, ever: a fresh network namespace with
only its own ``lo`` (packages reach a CI install phase through :mod:`heald.ci.index`, a
unix socket bound into the run). It has limits on the whole run (memory and processes: a cgroup per run; disk: the work tree on
a filesystem of its own; a sized ``/dev/shm``), hard per-process limits (address space, CPU
seconds, processes, file size, open files) and a wall-clock timeout that kills every process of
the run. Where the host cannot give the run-wide limits (heald not root), each
:class:`RunResult` says so in ``enforcement``, and ``sandbox.aggregate_limits: required`` makes
heald refuse such runs instead.

Backends (:func:`open_sandbox` picks the first that works when ``backend: auto``):

- ``bubblewrap`` (:mod:`heald.sandbox.bwrap`): Linux namespaces through ``bwrap``; starts in
  milliseconds.
- ``docker`` (:mod:`heald.sandbox.docker`): a container per run (``--network none``, memory and
  pids limits), when a Docker engine answers.

When no backend works heald refuses with :class:`SandboxUnavailable`, whose message names what
to install; it never runs the work unsandboxed (DESIGN.md invariant 2).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heald.config import SandboxConfig

#: The environment every sandboxed command starts from (the caller's ``env`` is added on top).
BASE_ENV = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin"}


class SandboxUnavailable(RuntimeError):
    """No sandbox backend works on this machine; the message says why and what to install."""


class SandboxError(RuntimeError):
    """A sandbox run could not be set up (a path to bind does not exist, …)."""


@dataclass(frozen=True)
class Limits:
    """Hard limits of one sandbox run.

    On the whole run (a cgroup per run, when heald can make one: see :mod:`heald.sandbox._cgroup`):
    ``memory_bytes`` caps the memory of all its processes together (anonymous memory, page
    cache, the tmpfs ``/tmp`` and ``/dev/shm``; beyond it the kernel OOM-kills a process of the
    run) and ``max_processes`` the processes and threads alive at once. ``disk_bytes`` bounds
    what the runs in one work tree can write there (its own filesystem of that size, see
    :mod:`heald.sandbox.disk`).

    Per process (rlimits, always): ``memory_bytes`` is also each process's address space
    (RLIMIT_AS), ``cpu_seconds`` its CPU time (RLIMIT_CPU), ``max_processes`` also RLIMIT_NPROC
    (counted inside the run's own user namespace), ``file_size_bytes`` the size of any file
    written (RLIMIT_FSIZE), ``open_files`` its descriptors (RLIMIT_NOFILE).

    ``tmp_bytes`` and ``shm_bytes`` size the private ``/tmp`` and ``/dev/shm``;
    ``timeout_seconds`` is the wall-clock limit of the whole run.
    """

    memory_bytes: int = 2 * 1024**3
    cpu_seconds: int = 600
    max_processes: int = 256
    file_size_bytes: int = 1024**3
    open_files: int = 4096
    tmp_bytes: int = 512 * 1024**2
    timeout_seconds: float = 900.0
    shm_bytes: int = 64 * 1024**2
    disk_bytes: int = 4 * 1024**3

    @classmethod
    def from_config(cls, cfg: SandboxConfig) -> Limits:
        """The limits configured in ``sandbox:`` of heald.yaml."""
        return cls(memory_bytes=cfg.memory_mb * 1024**2, cpu_seconds=cfg.cpu_seconds,
                   max_processes=cfg.max_processes, file_size_bytes=cfg.file_size_mb * 1024**2,
                   open_files=cfg.open_files, tmp_bytes=cfg.tmp_size_mb * 1024**2,
                   timeout_seconds=cfg.timeout_seconds, shm_bytes=cfg.shm_size_mb * 1024**2,
                   disk_bytes=cfg.disk_mb * 1024**2)

    def prlimit_args(self) -> list[str]:
        """The limits as ``prlimit(1)`` options (soft = hard); ``--core=0`` too."""
        return [f"--as={self.memory_bytes}", f"--cpu={self.cpu_seconds}", f"--nproc={self.max_processes}",
                f"--fsize={self.file_size_bytes}", f"--nofile={self.open_files}", "--core=0"]


@dataclass(frozen=True)
class RunResult:
    """What one sandbox run did.

    ``returncode`` is the command's exit status (negative: killed by that signal; None when the
    wall-clock timeout killed the run). ``output`` is stdout and stderr interleaved as the
    command wrote them, cut to the configured size (its first and last parts are kept, with a
    marker between; ``truncated`` says so). ``duration_s`` is wall-clock seconds.
    """

    command: list[str]
    returncode: int | None
    output: str
    duration_s: float
    timed_out: bool
    backend: str
    truncated: bool = False
    limits: Limits = field(default_factory=Limits)
    enforcement: str = ""
    oom_kills: int = 0
    forks_refused: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """A one-line summary: ``exit 1 in 2.31 s`` / ``killed by the 60 s timeout``, plus the
        run-wide limits it hit (``the run's memory limit of 512 MiB was reached: 1 process
        OOM-killed``)."""
        if self.timed_out:
            text = f"killed by the {self.limits.timeout_seconds:g} s timeout after {self.duration_s:.2f} s"
        elif self.returncode is not None and self.returncode < 0:
            text = f"killed by signal {-self.returncode} after {self.duration_s:.2f} s"
        else:
            text = f"exit {self.returncode} in {self.duration_s:.2f} s"
        if self.oom_kills:
            text += (f"; the run's memory limit of {self.limits.memory_bytes / 1024**2:g} MiB was reached: "
                     f"{self.oom_kills} process(es) OOM-killed")
        if self.forks_refused:
            text += f"; {self.forks_refused} fork(s) refused at the run's limit of {self.limits.max_processes} processes"
        return text


class Sandbox(ABC):
    """A backend that runs commands in isolation. Thread-safe; one instance serves many runs."""

    name: str
    cfg: SandboxConfig

    @abstractmethod
    def run(self, command: Sequence[str], *, workdir: Path, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, limits: Limits | None = None,
            read_only: Sequence[Path] = (), writable: Sequence[Path] = ()) -> RunResult:
        """Run ``command`` (argv) with ``workdir`` as the only writable directory (mounted at the
        same path), starting in ``cwd`` (default ``workdir``).

        ``env`` adds variables to :data:`BASE_ENV`; nothing else of heald's environment enters.
        ``read_only`` and ``writable`` are extra host paths bound at the same path. Never raises
        for the command's own failure (that is in the result); raises SandboxError when the run
        cannot be set up.
        """

    def prepare(self, path: Path) -> None:  # noqa: B027 (an optional hook: most sandboxes need nothing)
        """Make ``path`` (a work tree heald created) writable by the sandbox's user. No-op when
        the sandbox runs as heald's own user."""

    def bound_disk(self, workdir: Path, limits: Limits, owner: tuple[int, int] | None) -> str:
        """Give ``workdir`` its own filesystem of ``limits.disk_bytes`` (see
        :mod:`heald.sandbox.disk`) unless it has one; returns what bounds the run's disk, for
        :attr:`RunResult.enforcement`. Raises SandboxError when that is impossible and
        ``sandbox.aggregate_limits`` is ``required``."""
        from heald.sandbox import disk

        try:
            disk.bound(workdir, limits.disk_bytes, owner)
        except disk.DiskBoundUnavailable as exc:
            if self.cfg.aggregate_limits == "required":
                raise SandboxError(f"sandbox.aggregate_limits is required but the work tree's disk cannot be "
                                   f"bounded: {exc}") from exc
            return f"disk: not bounded ({exc}; only each file, by RLIMIT_FSIZE)"
        return f"disk: the work tree's own filesystem of {limits.disk_bytes / 1024**2:g} MiB"


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend works here: ``name``, ``ok`` and the ``detail`` (version or why not)."""

    name: str
    ok: bool
    detail: str


INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
                "with unprivileged user namespaces enabled, or start a Docker engine")


def backend_status(cfg: SandboxConfig) -> list[BackendStatus]:
    """Probe every backend (bubblewrap first, then Docker). Probing bubblewrap starts one
    trivial sandbox; probing Docker asks the engine for its version (a few seconds at most)."""
    from heald.sandbox import bwrap, docker

    return [bwrap.probe(cfg), docker.probe(cfg)]


def limits_status(cfg: SandboxConfig) -> list[BackendStatus]:
    """Whether this host can enforce the run-wide limits: ``cgroup`` (makes and removes one
    cgroup) and ``disk`` (root and mkfs.ext4 present). ``ok`` False means runs get only
    rlimits there (or are refused when ``sandbox.aggregate_limits`` is ``required``)."""
    import shutil

    from heald.sandbox import _cgroup

    try:
        cg = _cgroup.create(cfg.memory_mb * 1024**2, cfg.max_processes)
    except _cgroup.CgroupUnavailable as exc:
        cgroup = BackendStatus("cgroup", False, f"runs get only per-process rlimits: {exc}")
    else:
        problem = cg.destroy()
        cgroup = BackendStatus("cgroup", problem is None,
                               f"{cg.describe()}: {cfg.memory_mb} MiB and {cfg.max_processes} processes per run"
                               + (f" (but: {problem})" if problem else ""))
    if not running_as_root():
        disk = BackendStatus("disk", False, "work trees are not bounded: heald is not root (loop mounts need root)")
    elif shutil.which("mkfs.ext4", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        disk = BackendStatus("disk", False, "work trees are not bounded: mkfs.ext4 (e2fsprogs) is not installed")
    else:
        disk = BackendStatus("disk", True, f"each work tree on its own ext4 filesystem of {cfg.disk_mb} MiB")
    return [cgroup, disk]


def open_sandbox(cfg: SandboxConfig) -> Sandbox:
    """The configured backend (``backend: auto`` takes the first that works).

    Raises SandboxUnavailable, naming what failed and what to install, when none works.
    """
    from heald.sandbox import bwrap, docker

    wanted = ["bubblewrap", "docker"] if cfg.backend == "auto" else [cfg.backend]
    problems = []
    for name in wanted:
        status = bwrap.probe(cfg) if name == "bubblewrap" else docker.probe(cfg)
        if status.ok:
            return bwrap.Bubblewrap(cfg) if name == "bubblewrap" else docker.Docker(cfg)
        problems.append(f"{name}: {status.detail}")
    raise SandboxUnavailable(
        "no sandbox backend works, so heald will not run untrusted code (it never runs it unsandboxed): "
        + "; ".join(problems) + f". To fix: {INSTALL_HINT}"
        + ("" if cfg.backend == "auto" else f" (or set sandbox.backend: auto; it is {cfg.backend!r})") + ".")


def running_as_root() -> bool:
    return os.geteuid() == 0
