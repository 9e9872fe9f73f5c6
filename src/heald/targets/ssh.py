"""Remote hosts over SSH, with paramiko.

:class:`SSHRunner` runs an argv on a host of ``hosts``: key authentication only (no password,
no agent, no keys found lying around), the host's key checked against the configured
``known_hosts`` file with paramiko's ``RejectPolicy`` (a host missing from it, or presenting
another key, is refused: heald never accepts a key it was not given), at most
``max_sessions`` commands at once per host (others wait, within the command's time limit),
connecting bounded by ``connect_timeout_seconds`` and each command by its timeout.

The remote side runs the command through the login user's shell, so the argv is quoted
(``shlex.join``): an argument is always one argument there too.
"""

from __future__ import annotations

import os
import shlex
import threading
import time

import paramiko

from heald.config import SSHHostConfig
from heald.targets import TargetError
from heald.targets.transport import CommandResult

_limits: dict[tuple[str, int, str, int], threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()


def _semaphore(cfg: SSHHostConfig) -> threading.BoundedSemaphore:
    """The per-host concurrency limit, shared by every runner of the same host, user and limit
    (a configuration reloaded with another ``max_sessions`` gets a limit of its own)."""
    key = (cfg.address, cfg.port, cfg.user, cfg.max_sessions)
    with _limits_lock:
        sem = _limits.get(key)
        if sem is None:
            sem = _limits[key] = threading.BoundedSemaphore(cfg.max_sessions)
        return sem


class SSHRunner:
    """Runs commands on the host ``cfg`` (named ``name`` in messages); see the module
    docstring. Each run opens its own connection and closes it afterwards."""

    def __init__(self, name: str, cfg: SSHHostConfig):
        self.name = name
        self.cfg = cfg
        self.where = f"host {name} ({cfg.user}@{cfg.address}:{cfg.port})"

    def _connect(self) -> paramiko.SSHClient:
        cfg = self.cfg
        if not cfg.known_hosts.is_file():
            raise TargetError(f"{self.where}: known_hosts file {cfg.known_hosts} does not exist; heald never accepts "
                              "an unknown host key")
        client = paramiko.SSHClient()
        client.load_host_keys(str(cfg.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        passphrase = os.environ.get(cfg.key_passphrase_env) if cfg.key_passphrase_env else None
        try:
            client.connect(cfg.address, port=cfg.port, username=cfg.user, key_filename=str(cfg.key_file),
                           passphrase=passphrase, timeout=cfg.connect_timeout_seconds,
                           banner_timeout=cfg.connect_timeout_seconds, auth_timeout=cfg.connect_timeout_seconds,
                           channel_timeout=cfg.connect_timeout_seconds, allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise TargetError(f"{self.where}: refused: the host presented a {exc.key.get_name()} key that differs "
                              f"from the one in {cfg.known_hosts} (a changed host or a man in the middle)") from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise TargetError(f"{self.where}: refused: its host key is not in {cfg.known_hosts}") from exc
            raise TargetError(f"{self.where}: SSH failed: {exc}") from exc
        except (OSError, EOFError) as exc:
            client.close()
            raise TargetError(f"{self.where}: cannot connect: {exc.__class__.__name__}: {exc}") from exc
        return client

    def run(self, argv: list[str], timeout: float | None = None) -> CommandResult:
        """Run ``argv`` on the host (quoted for its shell), waiting at most ``timeout`` seconds
        (default ``command_timeout_seconds``) including the wait for a free session. Raises
        TargetError when the host is refused or unreachable, or the command times out; a
        non-zero exit is a result."""
        limit = timeout if timeout is not None else self.cfg.command_timeout_seconds
        deadline = time.monotonic() + limit
        sem = _semaphore(self.cfg)
        if not sem.acquire(timeout=limit):
            raise TargetError(f"{self.where}: all {self.cfg.max_sessions} sessions stayed busy for {limit:g} s")
        try:
            client = self._connect()
            try:
                remaining = max(0.1, deadline - time.monotonic())
                _, stdout, stderr = client.exec_command(shlex.join(argv), timeout=remaining)
                channel = stdout.channel
                try:
                    out = stdout.read()
                    err = stderr.read()
                except TimeoutError as exc:
                    raise TargetError(f"{self.where}: {argv[0]} timed out after {limit:g} s") from exc
                if not channel.status_event.wait(max(0.1, deadline - time.monotonic())):
                    raise TargetError(f"{self.where}: {argv[0]} timed out after {limit:g} s")
                return CommandResult(channel.recv_exit_status(), out.decode("utf-8", "replace"),
                                     err.decode("utf-8", "replace"))
            except paramiko.SSHException as exc:
                raise TargetError(f"{self.where}: {argv[0]}: SSH failed: {exc}") from exc
            finally:
                client.close()
        finally:
            sem.release()
