"""How a command reaches the machine a target lives on: :class:`LocalRunner` runs an argv on
this machine (behind an optional prefix such as ``podman exec host1``), the SSH runner of
:mod:`heald.targets.ssh` on a remote host. Both take an argv, never a shell string, and bound
every run in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Protocol

from heald.targets import TargetError

#: Environment variables a command inherits from heald (no secret of heald's leaks into it).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class CommandResult:
    """One finished command: its exit status and its output (text, undecodable bytes replaced)."""

    returncode: int
    stdout: str
    stderr: str

    def tail(self, chars: int = 500) -> str:
        """The end of stderr, else stdout, for an error message."""
        return (self.stderr.strip() or self.stdout.strip())[-chars:]


class Runner(Protocol):
    """Runs ``argv`` where a target lives, waiting at most ``timeout`` seconds. Raises
    TargetError when it cannot run it at all or it times out; a non-zero exit is a result."""

    where: str

    def run(self, argv: list[str], timeout: float) -> CommandResult: ...


class LocalRunner:
    """Runs commands on this machine, each argv after ``prefix`` (``["podman", "exec",
    "host1"]`` reaches the systemd inside a container), without a shell, with a minimal
    environment; a command over its time is killed with its process group."""

    def __init__(self, prefix: list[str] | None = None):
        self.prefix = list(prefix or [])
        self.where = " ".join(self.prefix) or "this machine"

    def run(self, argv: list[str], timeout: float) -> CommandResult:
        """Run ``argv`` (after the prefix) for at most ``timeout`` seconds; see :class:`Runner`."""
        full = [*self.prefix, *argv]
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        try:
            proc = subprocess.Popen(full, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        except OSError as exc:
            raise TargetError(f"{self.where}: could not run {full[0]!r}: {exc}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TargetError(f"{self.where}: {argv[0]} killed after {timeout:g} s") from exc
        return CommandResult(proc.returncode, out, err)
