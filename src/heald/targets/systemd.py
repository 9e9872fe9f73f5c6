"""systemd units, through ``systemctl`` and ``journalctl`` on the machine the unit lives on.

:func:`unit_state` reads ``systemctl show --property=… -- UNIT`` (``ActiveState``, ``SubState``,
``Result``, ``NRestarts``, ``MainPID``, ``InvocationID``, ``ExecMainStatus``; see
systemd.exec(5) and org.freedesktop.systemd1(5)); :func:`journal_tail` the unit's last journal
entries from ``journalctl -o json`` (one JSON object a line: ``MESSAGE``, ``PRIORITY``,
``__REALTIME_TIMESTAMP`` in µs; see systemd.journal-fields(7)); :func:`act` runs ``systemctl
restart|reload|reset-failed -- UNIT``.

Where the unit lives is a :class:`~heald.targets.transport.Runner`: this machine (behind
``command_prefix``, e.g. ``podman exec host1``) or a host of ``hosts`` over SSH
(:func:`runner_for`). A unit name is checked against :data:`heald.config.UNIT_NAME_PATTERN`
again here, and always follows ``--`` on the command line: it can never be read as an option
or as more than one argument.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from heald.config import UNIT_NAME_PATTERN, HealdConfig, SystemdUnitConfig
from heald.targets import TargetError
from heald.targets.transport import LocalRunner, Runner

#: The properties :func:`unit_state` reads.
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result", "NRestarts", "MainPID", "InvocationID",
              "ExecMainStatus", "ExecMainCode", "ActiveEnterTimestampMonotonic")

Verb = Literal["restart", "reload", "reset-failed"]

_UNIT = re.compile(UNIT_NAME_PATTERN)


def check_unit_name(unit: str) -> str:
    """``unit`` when it is a valid unit name (:data:`heald.config.UNIT_NAME_PATTERN`). Raises
    TargetError otherwise."""
    if not _UNIT.match(unit):
        raise TargetError(f"{unit!r} is not a systemd unit name (expected e.g. web.service)")
    return unit


@dataclass(frozen=True)
class UnitState:
    """A unit as systemd reports it: ``load_state`` (``loaded``, ``not-found``), ``active_state``
    (``active``, ``inactive``, ``failed``, ``activating``, ``deactivating``, ``reloading``),
    ``sub_state`` (``running``, ``dead``, ``auto-restart``…), ``result`` (``success``,
    ``exit-code``, ``signal``, ``oom-kill``…), ``n_restarts`` (automatic restarts by
    ``Restart=``), ``main_pid`` (0: none), ``invocation_id`` (new at each start), the main
    process's exit ``exec_main_status`` and ``exec_main_code`` (``exited``, ``killed``…)."""

    unit: str
    load_state: str
    active_state: str
    sub_state: str
    result: str
    n_restarts: int
    main_pid: int
    invocation_id: str
    exec_main_status: int
    exec_main_code: str

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "reloading")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``active (running), 0 restarts`` or ``failed (failed), result signal,
        main process killed status 9, 2 restarts``."""
        text = f"{self.active_state} ({self.sub_state})"
        if self.load_state != "loaded":
            text += f", {self.load_state}"
        if self.result and self.result != "success":
            text += f", result {self.result}"
            if self.exec_main_code:
                text += f", main process {self.exec_main_code} status {self.exec_main_status}"
        return f"{text}, {self.n_restarts} restarts"


def runner_for(unit: SystemdUnitConfig, config: HealdConfig, name: str = "") -> Runner:
    """Where ``unit`` lives: its host of ``hosts`` over SSH, else this machine behind its
    ``command_prefix``."""
    if unit.host is not None:
        from heald.targets.ssh import SSHRunner

        host = config.hosts.get(unit.host)
        if host is None:
            raise TargetError(f"systemd_units.{name}.host: {unit.host!r} is not a host of hosts")
        return SSHRunner(unit.host, host)
    return LocalRunner(unit.command_prefix)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def unit_state(unit: SystemdUnitConfig, runner: Runner) -> UnitState:
    """The unit's state now (``systemctl show``). Raises TargetError when systemctl cannot
    answer (no systemd there, the host unreachable)."""
    name = check_unit_name(unit.unit)
    r = runner.run(["systemctl", "show", f"--property={','.join(PROPERTIES)}", "--", name],
                   unit.timeout_seconds)
    if r.returncode != 0:
        raise TargetError(f"{runner.where}: systemctl show {name} failed (exit {r.returncode}): {r.tail()}")
    props = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return UnitState(unit=name, load_state=props.get("LoadState", ""), active_state=props.get("ActiveState", ""),
                     sub_state=props.get("SubState", ""), result=props.get("Result", ""),
                     n_restarts=_int(props.get("NRestarts", "0")), main_pid=_int(props.get("MainPID", "0")),
                     invocation_id=props.get("InvocationID", ""),
                     exec_main_status=_int(props.get("ExecMainStatus", "0")),
                     exec_main_code=_exec_code(props.get("ExecMainCode", "")))


def _exec_code(text: str) -> str:
    """systemctl show gives ``ExecMainCode`` as the number of a ``CLD_*`` code (waitid(2))."""
    return {"0": "", "1": "exited", "2": "killed", "3": "dumped", "4": "trapped", "5": "stopped",
            "6": "continued"}.get(text, text)


def _message(entry: dict[str, Any]) -> str:
    msg = entry.get("MESSAGE", "")
    if isinstance(msg, list):  # journalctl -o json gives non-UTF-8 or binary messages as a byte array
        msg = bytes(b for b in msg if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
    return str(msg)


def journal_tail(unit: SystemdUnitConfig, runner: Runner, lines: int | None = None) -> list[str]:
    """The unit's last ``lines`` (default ``journal_lines``) journal entries, oldest first, as
    ``<UTC time> <identifier>[<pid>]: <message>``. Raises TargetError when journalctl fails."""
    name = check_unit_name(unit.unit)
    r = runner.run(["journalctl", "-o", "json", "--no-pager", "-n", str(lines or unit.journal_lines),
                    f"--unit={name}"], unit.timeout_seconds)
    if r.returncode != 0:
        raise TargetError(f"{runner.where}: journalctl for {name} failed (exit {r.returncode}): {r.tail()}")
    out = []
    for line in r.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        try:
            at = datetime.fromtimestamp(int(entry.get("__REALTIME_TIMESTAMP", "0")) / 1e6, UTC)
            when = at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        except (ValueError, OverflowError):
            when = "?"
        who = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or name
        pid = entry.get("_PID") or entry.get("SYSLOG_PID")
        out.append(f"{when} {who}{f'[{pid}]' if pid else ''}: {_message(entry)}"[:2000])
    return out


def act(unit: SystemdUnitConfig, runner: Runner, verb: Verb) -> tuple[UnitState, UnitState]:
    """Run ``systemctl VERB -- UNIT`` (a restart of a failed unit runs ``reset-failed`` first:
    one that hit its start limit would be refused otherwise); after a restart wait ``start_period_seconds`` and require
    the unit to be active with the same invocation (it did not fail and restart meanwhile).
    Returns the state before and after. Raises TargetError with the unit's state when the
    command fails or the unit does not stay active."""
    if verb not in ("restart", "reload", "reset-failed"):
        raise TargetError(f"unsupported systemctl verb {verb!r}")
    name = check_unit_name(unit.unit)
    before = unit_state(unit, runner)
    if before.load_state == "not-found":
        raise TargetError(f"{runner.where}: unit {name} is not loaded (not found)")
    if verb == "restart" and before.active_state == "failed":
        # systemd refuses to start a unit that hit StartLimitBurst= ("start request repeated too
        # quickly", its Result often still exit-code) until its failed state is reset
        runner.run(["systemctl", "reset-failed", "--", name], unit.timeout_seconds)
    r = runner.run(["systemctl", verb, "--", name], unit.timeout_seconds)
    if r.returncode != 0:
        now = unit_state(unit, runner)
        raise TargetError(f"{runner.where}: systemctl {verb} {name} failed (exit {r.returncode}): {r.tail()}; "
                          f"unit {now.describe()}")
    if verb != "restart":
        return before, unit_state(unit, runner)
    first = unit_state(unit, runner)
    time.sleep(unit.start_period_seconds)
    after = unit_state(unit, runner)
    if not after.active or after.invocation_id != first.invocation_id:
        raise TargetError(f"{runner.where}: {name} did not stay active for {unit.start_period_seconds:g} s after the "
                          f"restart: {after.describe()}")
    return before, after
