"""``restart_unit``, ``reload_unit`` and ``reset_failed_unit``: systemd units heald adopted by
reference (``systemd_units.<name>``), on this machine or on a host over SSH
(:mod:`heald.targets.systemd`).

A remedy names the unit by its key in ``systemd_units``, never by a unit name taken from a
signal: only units the configuration declares can be acted on, and their names were checked
against :data:`heald.config.UNIT_NAME_PATTERN` when the configuration was loaded (and again
before every command).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import Field

from heald.config import TARGET_KEY_PATTERN, SystemdUnitConfig
from heald.remedies.base import (
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyParams,
    RemedyResult,
    Target,
    register,
)
from heald.targets import TargetError
from heald.targets import systemd as sd


class UnitParams(RemedyParams):
    """The unit remedies' parameters: the name of a configured unit (``systemd_units.<name>``)."""

    unit: str = Field(pattern=TARGET_KEY_PATTERN, description="a unit of systemd_units.<name>")


def _unit(ctx: RemedyContext, key: str) -> SystemdUnitConfig:
    cfg = ctx.config.systemd_units.get(key)
    if cfg is None:
        known = ", ".join(sorted(ctx.config.systemd_units)) or "none configured"
        raise RemedyError(f"unit {key!r} is not declared under systemd_units (declared: {known})")
    return cfg


class _UnitRemedy(Remedy[UnitParams]):
    """A ``systemctl VERB`` on a declared unit (see the module docstring)."""

    verb: ClassVar[sd.Verb]
    Params = UnitParams

    def target(self, params: UnitParams) -> Target:
        return Target("unit", params.unit)

    def touches_heald(self, params: UnitParams, heald: HealdSelf) -> str | None:
        """A unit on this machine whose main process is heald (heald run as a systemd service)."""
        cfg = heald.config.systemd_units.get(params.unit)
        if cfg is None or cfg.host is not None or cfg.command_prefix:
            return None
        try:
            st = sd.unit_state(cfg, sd.runner_for(cfg, heald.config, params.unit))
        except TargetError:
            return None
        if st.main_pid and st.main_pid in (os.getpid(), os.getppid()):
            return f"refused: unit:{params.unit} ({cfg.unit}) runs heald itself (main pid {st.main_pid})"
        return None

    def _run(self, params: UnitParams, ctx: RemedyContext) -> tuple[SystemdUnitConfig, Any, sd.UnitState,
                                                                     sd.UnitState]:
        cfg = _unit(ctx, params.unit)
        try:
            runner = sd.runner_for(cfg, ctx.config, params.unit)
            before, after = sd.act(cfg, runner, self.verb)
        except TargetError as exc:
            raise RemedyError(f"{self.verb} of unit {params.unit} did not take: {exc}") from exc
        return cfg, runner, before, after

    def apply(self, params: UnitParams, ctx: RemedyContext) -> RemedyResult:
        cfg, runner, before, after = self._run(params, ctx)
        return RemedyResult(f"systemctl {self.verb} {cfg.unit} on {runner.where}: was {before.describe()}; "
                            f"now {after.describe()}")


@register
class RestartUnit(_UnitRemedy):
    """``systemctl restart -- UNIT``, then the unit must stay active (the same invocation) for
    its ``start_period_seconds``; otherwise the action fails with its state.

    Guard: the snapshot is the unit's invocation id before; after a crash mid-apply, an active
    unit with another invocation means the restart happened. A restart is also safe to repeat.
    """

    name = "restart_unit"
    description = "Restart a systemd unit (on this machine or a host over SSH)"
    verb = "restart"

    def snapshot(self, params: UnitParams, ctx: RemedyContext) -> dict[str, Any] | None:
        cfg = _unit(ctx, params.unit)
        try:
            return {"unit": sd.unit_state(cfg, sd.runner_for(cfg, ctx.config, params.unit)).as_dict()}
        except TargetError as exc:
            return {"unit": None, "error": str(exc)}

    def already_applied(self, params: UnitParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        before = (snapshot or {}).get("unit")
        if not before:
            return False
        cfg = _unit(ctx, params.unit)
        try:
            now = sd.unit_state(cfg, sd.runner_for(cfg, ctx.config, params.unit))
        except TargetError:
            return False
        return now.active and now.invocation_id != before["invocation_id"]


@register
class ReloadUnit(_UnitRemedy):
    """``systemctl reload -- UNIT``: the unit re-reads its configuration (its ``ExecReload=``).
    Safe to repeat: a second reload reads the same configuration."""

    name = "reload_unit"
    description = "Reload a systemd unit's configuration (ExecReload=)"
    verb = "reload"


@register
class ResetFailedUnit(_UnitRemedy):
    """``systemctl reset-failed -- UNIT``: clears the failed state and the start rate limit
    (``StartLimitBurst=``) so systemd will start it again. Safe to repeat."""

    name = "reset_failed_unit"
    description = "Clear a systemd unit's failed state and start limit"
    verb = "reset-failed"
