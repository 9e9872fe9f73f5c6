"""A control group per sandbox run: the limits on the *whole* run (memory, processes) that
per-process rlimits cannot give.

cgroup v2 is used when a v2 hierarchy offers the ``memory`` and ``pids`` controllers: the run
gets ``<mount>/heald-sandbox/run-<id>`` with ``memory.max``, ``memory.swap.max = 0`` and
``pids.max``. Otherwise the v1 ``memory`` and ``pids`` hierarchies are used (a hybrid host, as
this project's CI machine): the run gets ``heald-sandbox-<id>`` below heald's own cgroup in each
(so limits set above heald still apply) with ``memory.limit_in_bytes``,
``memory.memsw.limit_in_bytes`` (when swap accounting exists) and ``pids.max``. Creating either
needs root (or a delegated hierarchy); :func:`create` raises :class:`CgroupUnavailable` saying
why otherwise, and the caller records that the run had only rlimits.

The kernel charges a cgroup for its processes' anonymous memory, page cache and tmpfs pages
(the run's ``/tmp`` and ``/dev/shm``) and, on v1, SysV shared memory; when the run goes over
its memory limit the kernel's OOM killer kills a process of the run (``oom_kill`` in
``memory.oom_control`` / ``memory.events``), and a ``fork`` beyond ``pids.max`` fails with
EAGAIN (``max`` in ``pids.events``). Formats: Documentation/admin-guide/cgroup-v1/memory.rst,
cgroup-v1/pids.rst and cgroup-v2.rst of the Linux kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

#: The processes bubblewrap itself keeps alive in a run (its monitor and the namespace's init),
#: allowed on top of ``max_processes`` so that the run's own budget is what the limit says.
SCAFFOLD_PROCESSES = 2

V2_GROUP = "heald-sandbox"
V1_PREFIX = "heald-sandbox-"


class CgroupUnavailable(RuntimeError):
    """No per-run cgroup can be made here; the message says why (not root, no hierarchy…)."""


def _mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, super options) of every cgroup mount, from ``/proc/self/mountinfo``
    (proc(5): fields up to `` - ``, then fstype, source, super options)."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype, _source, opts = (right.split(" ") + ["", ""])[:3]
        if fstype in ("cgroup", "cgroup2"):
            found.append((fstype, Path(left.split(" ")[4]), set(opts.split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller (``memory``, ``pids``…) and ``""`` for v2,
    from ``/proc/self/cgroup`` (``hierarchy-id:controllers:path`` lines, cgroups(7))."""
    paths: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2_mount() -> Path | None:
    for fstype, mount, _ in _mounts():
        if fstype == "cgroup2":
            try:
                controllers = set((mount / "cgroup.controllers").read_text().split())
            except OSError:
                continue
            if {"memory", "pids"} <= controllers:
                return mount
    return None


def _v1_dirs() -> dict[str, Path]:
    """The directory of this process's own cgroup in the v1 ``memory`` and ``pids`` hierarchies."""
    own = _own_paths()
    dirs: dict[str, Path] = {}
    for fstype, mount, opts in _mounts():
        if fstype != "cgroup":
            continue
        for c in ("memory", "pids"):
            if c in opts and c in own:
                dirs[c] = mount / own[c].lstrip("/")
    return dirs


@dataclass
class RunCgroup:
    """One run's cgroup: ``version`` 1 or 2 and its directories (v1: the memory and the pids
    one; v2: one). Made by :func:`create`; :meth:`destroy` removes it."""

    version: int
    dirs: tuple[Path, ...]

    def describe(self) -> str:
        return f"cgroup v{self.version} (memory, pids)"

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (not yet started its work) into the run's cgroup; its children
        inherit it. Raises OSError."""
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        """The processes in the run's cgroup now."""
        found: set[int] = set()
        for d in self.dirs:
            try:
                found |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def events(self) -> tuple[int, int]:
        """(processes the OOM killer killed in the run, forks refused by ``pids.max``)."""
        def counter(path: Path, key: str) -> int:
            try:
                for line in path.read_text().splitlines():
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
            except (OSError, ValueError):
                pass
            return 0

        if self.version == 2:
            d = self.dirs[0]
            return counter(d / "memory.events", "oom_kill"), counter(d / "pids.events", "max")
        mem, pids = self.dirs
        return counter(mem / "memory.oom_control", "oom_kill"), counter(pids / "pids.events", "max")

    def kill(self) -> None:
        """SIGKILL every process of the run (v2: ``cgroup.kill``, else one by one)."""
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs[0] / "cgroup.kill", "1")
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def destroy(self, timeout: float = 10.0) -> str | None:
        """Kill what remains of the run, wait (at most ``timeout`` seconds) until the cgroup is
        empty and remove it. Returns None, or what could not be cleaned up."""
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                return f"processes {sorted(self.pids())} of the run outlived SIGKILL for {timeout:g} s"
            self.kill()
            time.sleep(0.02)
        problems = []
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY: a process that just exited is still being released
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        problems.append(f"cannot remove {d}: {exc.strerror}")
                        break
                    time.sleep(0.02)
        return "; ".join(problems) or None


def create(memory_bytes: int, max_processes: int) -> RunCgroup:
    """A fresh cgroup limiting its processes together to ``memory_bytes`` of memory (no swap)
    and ``max_processes`` (+ :data:`SCAFFOLD_PROCESSES`) processes and threads. Raises
    CgroupUnavailable, saying why, when none can be made."""
    pids_max = str(max_processes + SCAFFOLD_PROCESSES)
    name = uuid.uuid4().hex[:16]
    made: list[Path] = []
    try:
        v2 = _v2_mount()
        if v2 is not None:
            parent = v2 / V2_GROUP
            with contextlib.suppress(OSError):  # already enabled, or this is not the v2 root: the next writes tell
                _write(v2 / "cgroup.subtree_control", "+memory +pids")
            parent.mkdir(exist_ok=True)
            _write(parent / "cgroup.subtree_control", "+memory +pids")
            d = parent / f"run-{name}"
            d.mkdir()
            made.append(d)
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", pids_max)
            return RunCgroup(2, (d,))
        dirs = _v1_dirs()
        missing = [c for c in ("memory", "pids") if c not in dirs]
        if missing:
            raise CgroupUnavailable(f"no cgroup v2 hierarchy with the memory and pids controllers, and no v1 "
                                    f"hierarchy for {' and '.join(missing)}")
        mem = dirs["memory"] / f"{V1_PREFIX}{name}"
        pids = dirs["pids"] / f"{V1_PREFIX}{name}"
        for d in (mem, pids):
            d.mkdir()
            made.append(d)
        _write(mem / "memory.limit_in_bytes", str(memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():  # swap accounting: memory + swap, so no swapping out of it
            _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
        _write(pids / "pids.max", pids_max)
        return RunCgroup(1, (mem, pids))
    except OSError as exc:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        why = "heald is not root" if os.geteuid() != 0 and exc.errno in (errno.EACCES, errno.EPERM) else exc.strerror
        raise CgroupUnavailable(f"cannot create a cgroup for the run ({why}: {getattr(exc, 'filename', '') or ''})"
                                ) from exc


def leftovers() -> list[Path]:
    """Run cgroups of heald's that still exist (after every run they should not)."""
    found: list[Path] = []
    v2 = _v2_mount()
    if v2 is not None and (v2 / V2_GROUP).is_dir():
        found += [p for p in (v2 / V2_GROUP).iterdir() if p.is_dir() and p.name.startswith("run-")]
    for d in _v1_dirs().values():
        if d.is_dir():
            found += [p for p in d.iterdir() if p.is_dir() and p.name.startswith(V1_PREFIX)]
    return found
