"""Probes of targets heald adopted by reference: a ``container`` probe reads a container's
state through the Docker Engine API (:mod:`heald.targets.containers`), a ``systemd`` probe a
unit's through ``systemctl show`` (:mod:`heald.targets.systemd`), locally or over SSH.

Each is a stateful checker (one per probe loop, like a metric probe) returning a
:class:`Reading`, which :func:`heald.sources.probes.make_checker` turns into a probe result;
its ``labels`` go on the probe's signals, for runbooks to match:

- container: fails when it is not running, its health check says ``unhealthy``, or its
  restart count grew since the previous check (a crash loop under a restart policy). Labels
  ``container`` (its name in ``containers``), ``container_state``, ``container_health``,
  ``oom_killed`` (``true``/``false``), ``container_image``; and ``container_previous_image``
  when this checker saw the container's image change (someone deployed a new image), which the
  ``container-bad-image`` runbook reads to roll back.
- systemd: fails when the unit is not active (``failed``, ``inactive``, crash-looping in
  ``auto-restart``) or not found, or its automatic restarts (``NRestarts``) grew. Labels
  ``unit`` (its name in ``systemd_units``), ``unit_active_state``, ``unit_sub_state``,
  ``unit_result``.

An engine or host heald cannot reach gives no data (neither a failure nor a recovery: heald
cannot judge, and could not act either); a container or unit that does not exist fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heald.config import HealdConfig, ProbeConfig
from heald.targets import TargetError
from heald.targets import containers as ct
from heald.targets import systemd as sd


@dataclass(frozen=True)
class Reading:
    """One check of a target: ``ok``, a human-readable ``detail``, ``no_data`` (could not judge;
    ``ok`` is then True), ``value`` (its restart count) and the ``labels`` for its signals."""

    ok: bool
    detail: str
    no_data: bool = False
    value: float | None = None
    labels: dict[str, str] = field(default_factory=dict)


class ContainerProbe:
    """The check of a ``container`` probe (see the module docstring)."""

    def __init__(self, probe: ProbeConfig, config: HealdConfig):
        assert probe.container is not None
        self.key = probe.container
        self.cfg = config.containers[probe.container]
        self.last_restarts: int | None = None
        self.image: str | None = None
        self.previous_image: str | None = None

    def __call__(self) -> Reading:
        try:
            st = ct.inspect(self.cfg)
        except TargetError as exc:
            gone = str(exc).endswith("not found")
            return Reading(not gone, str(exc) if gone else f"no data: {exc}", no_data=not gone,
                           labels={"container": self.key, "container_state": "missing"})
        if self.image is not None and st.image != self.image:
            self.previous_image = self.image
        self.image = st.image
        grew = self.last_restarts is not None and st.restart_count > self.last_restarts
        restarted = st.restart_count - (self.last_restarts or 0)
        self.last_restarts = st.restart_count
        ok = st.running and st.health != "unhealthy" and not grew
        detail = f"container {self.cfg.name} is {st.describe()}"
        if grew:
            detail += f" (restarted {restarted} times since the last check)"
        labels = {"container": self.key, "container_state": st.status, "container_health": st.health or "none",
                  "oom_killed": "true" if st.oom_killed else "false", "container_image": st.image}
        if self.previous_image:
            labels["container_previous_image"] = self.previous_image
        return Reading(ok, detail, value=float(st.restart_count), labels=labels)


class SystemdProbe:
    """The check of a ``systemd`` probe (see the module docstring)."""

    def __init__(self, probe: ProbeConfig, config: HealdConfig):
        assert probe.unit is not None
        self.key = probe.unit
        self.cfg = config.systemd_units[probe.unit]
        self.runner = sd.runner_for(self.cfg, config, probe.unit)
        self.last_restarts: int | None = None

    def __call__(self) -> Reading:
        try:
            st = sd.unit_state(self.cfg, self.runner)
        except TargetError as exc:
            return Reading(True, f"no data: {exc}", no_data=True, labels={"unit": self.key})
        grew = self.last_restarts is not None and st.n_restarts > self.last_restarts
        self.last_restarts = st.n_restarts
        ok = st.active and st.load_state == "loaded" and not grew
        detail = f"unit {st.unit} on {self.runner.where} is {st.describe()}"
        if grew:
            detail += " (restarted automatically since the last check)"
        labels = {"unit": self.key, "unit_active_state": st.active_state, "unit_sub_state": st.sub_state,
                  "unit_result": st.result or "none"}
        return Reading(ok, detail, value=float(st.n_restarts), labels=labels)
