"""The bubblewrap backend: Linux namespaces through ``bwrap`` (Debian package ``bubblewrap``).

Each run is ``bwrap --unshare-all --unshare-user [--share-net] --die-with-parent --new-session
--disable-userns`` with the system directories bound read-only, a private ``/proc``, a private
read-only ``/dev`` with a size-limited tmpfs ``/dev/shm``, a size-limited tmpfs ``/tmp``, the work
tree bound writable at its own path, a cleared environment, and the command started under
``prlimit(1)`` with the run's limits. ``prlimit`` runs *inside* the new user namespace, so
RLIMIT_NPROC counts only the run's own processes (the kernel counts processes per user
namespace), and two runs never share a process budget.

Limits on the whole run: ``bwrap`` starts inside a fresh cgroup of the run's
(:mod:`heald.sandbox._cgroup`: memory and pids), entered before it execs, so every process of
the run is in it; the cgroup is emptied and removed after the run. The work tree is given its
own filesystem of ``disk_bytes`` (:mod:`heald.sandbox.disk`) at its first run.

When heald runs as root, ``bwrap`` runs as the unprivileged ``sandbox.uid``/``sandbox.gid``
(default 65534, nobody): root inside a namespace would be exempt from RLIMIT_NPROC. That user
must then be able to reach the paths it binds (every parent directory traversable), and heald
hands it the work tree (``chown``) before each run.

The wall-clock timeout kills ``bwrap``'s process group; ``--die-with-parent`` then kills the
namespace's first process, and with it, the kernel kills every process of the run's PID
namespace, however it daemonized.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from heald.sandbox import BASE_ENV, BackendStatus, Limits, RunResult, Sandbox, SandboxError, _cgroup, running_as_root
from heald.sandbox._process import run_launcher

if TYPE_CHECKING:
    from heald.config import SandboxConfig

log = structlog.get_logger("heald.sandbox")

SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
LAUNCHER_ENV = {"PATH": "/usr/bin:/bin"}

_probe_cache: dict[tuple[int | None, str], BackendStatus] = {}
_probe_lock = threading.Lock()


def _system_args() -> list[str]:
    args: list[str] = []
    for p in SYSTEM_PATHS:
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    resolv = "/etc/resolv.conf"
    if os.path.islink(resolv):  # e.g. systemd-resolved's stub under /run: needed for DNS in the install phase
        target = os.path.realpath(resolv)
        if not target.startswith("/etc/"):
            args += ["--ro-bind-try", target, target]
    return args


_passwd_files: dict[tuple[int, str], Path] = {}


def passwd_with_home(uid: int, home: str) -> Path | None:
    """A copy of the host's ``/etc/passwd`` (format: passwd(5)) in which user ``uid``'s home
    directory is ``home``, bound over ``/etc/passwd`` in the sandbox: a tool that asks the
    password database for the home directory (``pwd.getpwuid``, ``~user``) finds the run's
    writable HOME, not ``/nonexistent``. None when the host has no ``/etc/passwd``; a user it
    does not list is added. Files are made once per (uid, home) under a private directory."""
    import tempfile

    key = (uid, home)
    found = _passwd_files.get(key)
    if found is not None and found.exists():
        return found
    try:
        lines = Path("/etc/passwd").read_text().splitlines()
    except OSError:
        return None
    out, seen = [], False
    for line in lines:
        f = line.split(":")
        if len(f) == 7 and f[2] == str(uid):
            f[5], seen = home, True
            line = ":".join(f)
        out.append(line)
    if not seen:
        out.append(f"sandbox:x:{uid}:{uid}:heald sandbox:{home}:/bin/sh")
    d = Path(tempfile.mkdtemp(prefix="heald-passwd-"))
    d.chmod(0o755)
    path = d / "passwd"
    path.write_text("\n".join(out) + "\n")
    path.chmod(0o644)
    _passwd_files[key] = path
    return path


def _reachable(path: Path, uid: int, gid: int) -> str | None:
    """None when user ``uid``/``gid`` can traverse every directory above ``path``; else the
    first directory that blocks it."""
    for parent in [*reversed(path.parents)]:
        try:
            st = parent.stat()
        except OSError:
            return str(parent)
        mode = st.st_mode
        if st.st_uid == uid:
            ok = bool(mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(mode & stat.S_IXGRP)
        else:
            ok = bool(mode & stat.S_IXOTH)
        if not ok:
            return f"{parent} (mode {stat.S_IMODE(mode):04o}, owner {st.st_uid})"
    return None


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything under it to ``uid``/``gid`` (entries already theirs are
    skipped; symlinks themselves are changed, never followed)."""
    def own(p: str) -> None:
        st = os.lstat(p)
        if st.st_uid != uid or st.st_gid != gid:
            os.lchown(p, uid, gid)

    own(str(path))
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            own(os.path.join(root, name))


class Bubblewrap(Sandbox):
    """Runs commands under ``bwrap`` (see the module docstring)."""

    name = "bubblewrap"

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.bwrap = shutil.which("bwrap") or "bwrap"
        self.prlimit = shutil.which("prlimit", path="/usr/bin:/bin") or "/usr/bin/prlimit"
        self.as_user = (cfg.uid, cfg.gid) if running_as_root() else None
        self.output_limit = cfg.output_limit_kb * 1024

    def argv(self, command: Sequence[str], *, workdir: Path | None, cwd: Path, env: Mapping[str, str],
             limits: Limits, read_only: Sequence[Path] = (), writable: Sequence[Path] = ()) -> list[str]:
        """The full ``bwrap`` command line of one run (see the module docstring); ``workdir``
        None binds no work tree (the probe)."""
        # --unshare-all includes the network: a fresh namespace with only its own lo. There is
        # deliberately no way to share the host's network (DESIGN.md invariant 2).
        a = [self.bwrap, "--unshare-all", "--unshare-user"]
        a += ["--die-with-parent", "--new-session", "--disable-userns", "--hostname", "heald-sandbox"]
        a += _system_args()
        home = {**BASE_ENV, **env}.get("HOME", "/tmp")
        passwd = passwd_with_home(self.as_user[0] if self.as_user else os.getuid(), home)
        if passwd is not None:
            a += ["--ro-bind", str(passwd), "/etc/passwd"]
        a += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm",
              "--remount-ro", "/dev", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
        for p in [*self.cfg.read_only_paths, *read_only]:
            a += ["--ro-bind", str(p), str(p)]
        for p in [*([workdir] if workdir is not None else []), *writable]:
            a += ["--bind", str(p), str(p)]
        a += ["--remount-ro", "/", "--chdir", str(cwd), "--clearenv"]
        for k, v in {**BASE_ENV, **env}.items():
            a += ["--setenv", k, v]
        a += ["--", self.prlimit, *limits.prlimit_args(), "--", *command]
        return a

    def prepare(self, path: Path) -> None:
        if self.as_user is not None:
            hand_over(path, *self.as_user)

    def _check_paths(self, paths: Sequence[Path]) -> None:
        for p in paths:
            if not p.exists():
                raise SandboxError(f"cannot bind {p} into the sandbox: it does not exist")
            if self.as_user is not None:
                blocked = _reachable(p, *self.as_user)
                if blocked is not None:
                    raise SandboxError(
                        f"the sandbox user {self.as_user[0]} cannot reach {p}: {blocked} is not traversable; "
                        f"keep work directories (ci.work_dir) under directories others may traverse (chmod o+x), "
                        f"or set sandbox.uid")

    def run(self, command: Sequence[str], *, workdir: Path, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, limits: Limits | None = None,
            read_only: Sequence[Path] = (), writable: Sequence[Path] = ()) -> RunResult:
        limits = limits or Limits.from_config(self.cfg)
        workdir = Path(workdir).resolve()
        cwd = Path(cwd).resolve() if cwd is not None else workdir
        self._check_paths([workdir, *read_only, *writable, *self.cfg.read_only_paths])
        for p in [workdir, *writable]:
            self.prepare(p)
        disk_note = self.bound_disk(workdir, limits, self.as_user)
        argv = self.argv(command, workdir=workdir, cwd=cwd, env=env or {}, limits=limits,
                         read_only=read_only, writable=writable)
        uid, gid = self.as_user if self.as_user else (None, None)
        cgroup: _cgroup.RunCgroup | None
        try:
            cgroup = _cgroup.create(limits.memory_bytes, limits.max_processes)
            notes = [cgroup.describe()]
        except _cgroup.CgroupUnavailable as exc:
            if self.cfg.aggregate_limits == "required":
                raise SandboxError(f"sandbox.aggregate_limits is required but {exc}") from exc
            cgroup, notes = None, [f"rlimits only, no limit on the whole run ({exc})"]
        oom_kills = forks_refused = 0
        try:
            done = run_launcher(argv, timeout=limits.timeout_seconds, output_limit=self.output_limit,
                                env=LAUNCHER_ENV, user=uid, group=gid,
                                attach=cgroup.attach if cgroup is not None else None)
        finally:
            if cgroup is not None:
                oom_kills, forks_refused = cgroup.events()
                problem = cgroup.destroy()
                if problem:
                    log.warning("sandbox.cgroup_cleanup_failed", problem=problem)
                    notes.append(f"cleanup: {problem}")
        return RunResult(command=list(command), returncode=done.returncode, output=done.output,
                         duration_s=done.duration_s, timed_out=done.timed_out, backend=self.name,
                         truncated=done.truncated, limits=limits, enforcement="; ".join([*notes, disk_note]),
                         oom_kills=oom_kills, forks_refused=forks_refused)


def probe(cfg: SandboxConfig) -> BackendStatus:
    """Does bubblewrap work here? Starts one trivial sandbox (cached per process)."""
    as_user = (cfg.uid, cfg.gid) if running_as_root() else None
    key = (as_user[0] if as_user else None, shutil.which("bwrap") or "")
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        status = _probe(cfg)
        if status.ok:  # a failure is probed again next time (it may be fixed meanwhile)
            _probe_cache[key] = status
        return status


def _probe(cfg: SandboxConfig) -> BackendStatus:
    exe = shutil.which("bwrap")
    if exe is None:
        return BackendStatus("bubblewrap", False, "the bwrap command is not installed")
    if shutil.which("prlimit", path="/usr/bin:/bin") is None:
        return BackendStatus("bubblewrap", False, "prlimit (util-linux) is not installed in /usr/bin")
    sb = Bubblewrap(cfg)
    limits = Limits(timeout_seconds=20, max_processes=16, memory_bytes=512 * 1024**2, tmp_bytes=1024**2)
    argv = sb.argv(["/bin/sh", "-c", "exit 0"], workdir=None, cwd=Path("/"), env={}, limits=limits)
    uid, gid = sb.as_user if sb.as_user else (None, None)
    t0 = time.monotonic()
    try:
        done = run_launcher(argv, timeout=20, output_limit=16 * 1024, env=LAUNCHER_ENV, user=uid, group=gid)
    except OSError as exc:
        return BackendStatus("bubblewrap", False, f"could not start bwrap: {exc}")
    if done.returncode != 0:
        why = done.output.strip()[-400:] or f"exit {done.returncode}"
        hint = (" (are unprivileged user namespaces disabled? sysctl kernel.unprivileged_userns_clone=1 or "
                "user.max_user_namespaces>0)" if "namespace" in why.lower() or "permission" in why.lower() else "")
        return BackendStatus("bubblewrap", False, f"bwrap is installed but cannot create a sandbox here: {why}{hint}")
    version = _version(exe)
    return BackendStatus("bubblewrap", True, f"{version} at {exe}, started in {time.monotonic() - t0:.3f} s")


def _version(exe: str) -> str:
    import subprocess

    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "bubblewrap"
