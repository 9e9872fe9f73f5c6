"""Targets heald does not launch, adopted by reference: containers through the Docker Engine
API (:mod:`heald.targets.containers`), systemd units on this machine or on a remote host
(:mod:`heald.targets.systemd`), remote hosts over SSH (:mod:`heald.targets.ssh`).

Each module reads a target's state and its logs and carries out the actions its remedies
(:mod:`heald.remedies.containers`, :mod:`heald.remedies.systemd`) and probes
(:mod:`heald.sources.targets`) need. Errors are :class:`TargetError`, whose message names the
target and what failed.
"""

from __future__ import annotations


class TargetError(RuntimeError):
    """Reading or acting on a target failed (unreachable engine or host, unknown container or
    unit, a command that failed or timed out); the message says which target and why."""
