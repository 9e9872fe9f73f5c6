"""Managed services: child processes heald starts, watches and may restart.

Each managed service (a ``services.<name>`` with a ``command`` in ``heald.yaml``) runs in its
own session (process group) with its output appended to ``<state_dir>/services/<name>.log``.
Its identity (pid and kernel start time, from ``/proc/<pid>/stat`` field 22) is kept in
``<state_dir>/services/<name>.json``, so that a heald restarted after a crash adopts the
running process instead of starting a second one. Services keep running when heald dies:
heald's own failure must not take down what it watches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from heald.config import HealdConfig, ServiceConfig
from heald.files import private_dir
from heald.models import utcnow


def _proc_start_ticks(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie.
    Source: proc(5), ``/proc/<pid>/stat`` fields 3 (state) and 22 (starttime)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


@dataclass(frozen=True)
class ProcessIdentity:
    """Which process instance runs a service: pid plus kernel start time (pids are reused)."""

    pid: int
    start_ticks: int

    def as_dict(self) -> dict[str, int]:
        return {"pid": self.pid, "start_ticks": self.start_ticks}


class StartFailed(RuntimeError):
    """A (re)started service exited within its start period; the message holds how it ended
    and the last lines of its output (from ``<state_dir>/services/<name>.log``)."""


class BackingOff(RuntimeError):
    """A service that kept exiting during its start period may not be restarted yet."""


TAIL_LINES = 20
_TAIL_BYTES = 16384


class ManagedProcess:
    """One managed service. Thread-safe: start/stop/restart hold a lock."""

    def __init__(self, name: str, cfg: ServiceConfig, state_dir: Path):
        if not cfg.command:
            raise ValueError(f"service {name!r} has no command; only services with a command are managed")
        self.name = name
        self.cfg = cfg
        self.command: list[str] = cfg.command
        self.dir = state_dir / "services"
        private_dir(self.dir)  # service output may hold secrets
        self.state_file = self.dir / f"{name}.json"
        self.log_file = self.dir / f"{name}.log"
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._identity: ProcessIdentity | None = None
        self.started_at: datetime | None = None
        self.starts = 0
        self.quick_exits = 0  # restarts in a row that exited within the start period
        self._next_start_at = 0.0  # time.monotonic() before which restart_checked backs off
        self._log_offset = 0  # size of the log file when the current instance started

    # -- identity --------------------------------------------------------------------------
    def identity(self) -> ProcessIdentity | None:
        """The running instance, or None when the service's process is not running."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                return None
            ident = self._identity
            if ident is None or _proc_start_ticks(ident.pid) != ident.start_ticks:
                return None
            return ident

    def is_running(self) -> bool:
        return self.identity() is not None

    def exit_description(self) -> str:
        """How the process ended, e.g. ``killed by SIGKILL`` or ``exited with code 1``."""
        with self._lock:
            if self.is_running():
                return "running"
            if self._proc is not None and self._proc.returncode is not None:
                rc = self._proc.returncode
                if rc < 0:
                    try:
                        return f"killed by {signal.Signals(-rc).name}"
                    except ValueError:
                        return f"killed by signal {-rc}"
                return f"exited with code {rc}"
            if self._identity is not None:
                return "exited (not a child of this heald, status unknown)"
            return "not started"

    # -- lifecycle -------------------------------------------------------------------------
    def adopt(self) -> bool:
        """Take over the instance recorded in the state file if it still runs. Returns True
        if adopted."""
        with self._lock:
            try:
                data = json.loads(self.state_file.read_text())
                ident = ProcessIdentity(int(data["pid"]), int(data["start_ticks"]))
            except (OSError, ValueError, KeyError):
                return False
            if _proc_start_ticks(ident.pid) != ident.start_ticks:
                return False
            self._identity, self._proc = ident, None
            self.started_at = datetime.fromisoformat(data["started_at"]) if data.get("started_at") else utcnow()
            return True

    def start(self) -> ProcessIdentity:
        """Start the service if it is not running; returns the running instance."""
        with self._lock:
            ident = self.identity()
            if ident is not None:
                return ident
            env = {**os.environ, **self.cfg.env}
            try:
                self._log_offset = self.log_file.stat().st_size
            except OSError:
                self._log_offset = 0
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen(self.command, cwd=self.cfg.cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            ticks = None
            for _ in range(100):
                ticks = _proc_start_ticks(proc.pid)
                if ticks is not None or proc.poll() is not None:
                    break
                time.sleep(0.001)
            self._proc = proc
            self._identity = ProcessIdentity(proc.pid, ticks or 0)
            self.started_at = utcnow()
            self.starts += 1
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({**self._identity.as_dict(), "started_at": self.started_at.isoformat(),
                                       "command": self.cfg.command}))
            os.replace(tmp, self.state_file)
            return self._identity

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the service's process group, then SIGKILL after ``timeout`` seconds."""
        with self._lock:
            ident = self.identity()
            if ident is None:
                self._reap()
                return
            deadline = time.monotonic() + (timeout if timeout is not None else self.cfg.stop_timeout_seconds)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(ident.pid, sig)
                except ProcessLookupError:
                    break
                except PermissionError:
                    os.kill(ident.pid, sig)
                while time.monotonic() < deadline and _proc_start_ticks(ident.pid) == ident.start_ticks:
                    self._reap()
                    time.sleep(0.01)
                if _proc_start_ticks(ident.pid) != ident.start_ticks:
                    break
                deadline = time.monotonic() + 2.0
            self._reap()

    def restart(self) -> ProcessIdentity:
        with self._lock:
            self.stop()
            return self.start()

    def output_tail(self, lines: int = TAIL_LINES) -> list[str]:
        """The last ``lines`` lines the current (or last) instance wrote to its log file
        (stdout and stderr together; at most the last 16 KiB, decoded as UTF-8 with
        replacement)."""
        try:
            with open(self.log_file, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(self._log_offset, size - _TAIL_BYTES)
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-lines:]

    def restart_checked(self) -> ProcessIdentity:
        """Restart, then watch the new instance for ``start_period_seconds``.

        Raises BackingOff (without touching the process) while the wait after earlier quick
        exits lasts: ``start_period_seconds * 2**(n-1)`` seconds after the n-th exit in a row,
        capped at ``restart_backoff_max_seconds``. Raises StartFailed when the new instance
        exits within its start period, with its exit status and last output lines.
        """
        with self._lock:
            wait = self._next_start_at - time.monotonic()
            if wait > 0:
                raise BackingOff(f"{self.name} exited during its start period {self.quick_exits} time(s) in a row; "
                                 f"not restarting it for another {wait:.1f}s (exponential backoff)")
            ident = self.restart()
            deadline = time.monotonic() + self.cfg.start_period_seconds
            while time.monotonic() < deadline and self.is_running():
                time.sleep(0.02)
            if self.is_running():
                self.quick_exits, self._next_start_at = 0, 0.0
                return ident
            self.quick_exits += 1
            backoff = min(self.cfg.start_period_seconds * 2 ** (self.quick_exits - 1),
                          self.cfg.restart_backoff_max_seconds)
            self._next_start_at = time.monotonic() + backoff
            tail = self.output_tail()
            shown = "\n".join(tail) if tail else "(no output)"
            raise StartFailed(f"{self.name} {self.exit_description()} within its start period "
                              f"({self.cfg.start_period_seconds:g}s) after the restart; next restart allowed in "
                              f"{backoff:g}s; last output lines:\n{shown}")

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.poll()


class Supervisor:
    """All managed services of a configuration, by name."""

    def __init__(self, config: HealdConfig):
        self.processes: dict[str, ManagedProcess] = {
            name: ManagedProcess(name, svc, config.state_dir)
            for name, svc in config.services.items() if svc.command
        }

    def get(self, name: str) -> ManagedProcess | None:
        return self.processes.get(name)

    def start_all(self, leave: Collection[str] = ()) -> dict[str, str]:
        """At heald's start: adopt every service still running from an earlier heald, and start
        those heald never started (no instance recorded in the state file: the initial start,
        which is not a healing). Nothing with an incident is touched (DESIGN.md invariant 1):

        - a service named in ``leave`` (one with an open incident) is left as it is: that
          incident's workflow decides, through the gate;
        - a service heald started before that is not running any more (it crashed while heald
          was down, or the host rebooted) and that has probes is left down too: its probes
          see it down as they would see a crash while heald runs, and open an incident that
          goes through the gate;
        - one with no probe is started (heald could neither notice nor verify anything about
          it, so the gate would have nothing to decide on).

        Returns {name: 'adopted' | 'started' (never started before) | 'started_unprobed'
        (down, no open incident, no probe) | 'left' (in ``leave``, down) | 'down' (left to its
        probes)}."""
        result = {}
        for name, proc in self.processes.items():
            if proc.adopt():
                result[name] = "adopted"
            elif name in leave:
                result[name] = "left"
            elif proc.state_file.exists() and proc.cfg.probes:
                result[name] = "down"
            else:
                known = proc.state_file.exists()
                proc.start()
                result[name] = "started_unprobed" if known else "started"
        return result

    def stop_all(self) -> None:
        """Stop every service, and forget their instances: heald stopped them on purpose, so
        the next heald's start is their initial start again (:meth:`start_all`)."""
        for proc in self.processes.values():
            proc.stop()
            proc.state_file.unlink(missing_ok=True)
