"""``run_command``: run a command from the configuration's allowlist (``remedies.commands``)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from pydantic import Field

from heald.config import CommandConfig
from heald.models import Risk
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

#: Environment variables a command inherits from heald; everything else is left out (heald's
#: own secrets must not leak into it). The command's ``env`` adds to these.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


class RunCommandParams(RemedyParams):
    name: str = Field(min_length=1, max_length=200, description="a command in remedies.commands")


def _command(params: RunCommandParams, ctx: RemedyContext) -> CommandConfig:
    cmd = ctx.config.remedies.commands.get(params.name)
    if cmd is None:
        allowed = ", ".join(sorted(ctx.config.remedies.commands)) or "none configured"
        raise RemedyNotApplicable(f"command {params.name!r} is not on the allowlist remedies.commands (allowed: {allowed})")
    return cmd


def _run_remote(name: str, cmd: CommandConfig, ctx: RemedyContext) -> RemedyResult:
    """Run the allowlisted ``cmd`` on its host over SSH (:mod:`heald.targets.ssh`: known host
    key, key authentication, the host's session limit), bounded by its ``timeout_seconds``."""
    from heald.targets import TargetError
    from heald.targets.ssh import SSHRunner

    assert cmd.host is not None
    host = ctx.config.hosts.get(cmd.host)
    if host is None:
        raise RemedyError(f"{name}: host {cmd.host!r} is not a host of hosts")
    try:
        r = SSHRunner(cmd.host, host).run(cmd.argv, cmd.timeout_seconds)
    except TargetError as exc:
        raise RemedyError(f"{name}: {exc}") from exc
    output = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise RemedyError(f"{name} on host {cmd.host} exited with code {r.returncode}: {output[-1000:]}")
    return RemedyResult(f"{name} on host {cmd.host} succeeded: {output[-1000:] or '(no output)'}")


@register
class RunCommand(Remedy[RunCommandParams]):
    """Run an allowlisted command: its argv exactly, without a shell, with a minimal
    environment, in its ``cwd``, killed after ``timeout_seconds``. A non-zero exit fails the
    remedy with the output's tail. With ``host`` it runs on that host of ``hosts`` over SSH
    (its argv quoted for the remote shell, so each argument stays one).

    Guard: after a crash mid-run heald cannot know whether the command ran; it runs it again
    only when the allowlist marks it ``idempotent``, and otherwise leaves the verdict to
    verification.
    """

    name = "run_command"
    description = "Run a command from the configuration's allowlist"
    Params = RunCommandParams
    default_risk = Risk.medium

    def target(self, params: RunCommandParams) -> Target:
        return Target("command", params.name)

    def cannot_apply(self, params: RunCommandParams, heald: HealdSelf) -> str | None:
        """A command that is not on the allowlist ``remedies.commands``."""
        if params.name not in heald.config.remedies.commands:
            return f"run_command cannot run {params.name!r}: it is not on the allowlist remedies.commands"
        return None

    def touches_heald(self, params: RunCommandParams, heald: HealdSelf) -> str | None:
        """A command whose working directory or an absolute path among its arguments lies in
        heald's own state (on this machine: a command on another host does not touch it)."""
        cmd = heald.config.remedies.commands.get(params.name)
        if cmd is None or cmd.host is not None:
            return None
        places = [p for p in ([cmd.cwd] if cmd.cwd else []) if heald.owns_path(p)]
        places += [Path(a) for a in cmd.argv if a.startswith("/") and heald.owns_path(Path(a))]
        if places:
            return f"refused: command {params.name} works on heald's own state ({places[0]})"
        return None

    def already_applied(self, params: RunCommandParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        return not _command(params, ctx).idempotent

    def apply(self, params: RunCommandParams, ctx: RemedyContext) -> RemedyResult:
        cmd = _command(params, ctx)
        if cmd.host is not None:
            return _run_remote(params.name, cmd, ctx)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ} | cmd.env
        try:
            proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        except OSError as exc:
            raise RemedyError(f"{params.name}: could not run {cmd.argv[0]!r}: {exc}") from exc
        try:
            stdout, _ = proc.communicate(timeout=cmd.timeout_seconds)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: no child outlives the limit
            proc.communicate()
            raise RemedyError(f"{params.name}: killed after {cmd.timeout_seconds:g} s") from exc
        output = stdout.strip()
        if proc.returncode != 0:
            raise RemedyError(f"{params.name} exited with code {proc.returncode}: {output[-1000:]}")
        return RemedyResult(f"{params.name} succeeded: {output[-1000:] or '(no output)'}")
