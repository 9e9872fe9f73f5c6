"""The logs of adopted targets as diagnosis evidence: the tail of a container's log (Docker
Engine API) and a systemd unit's last journal entries (``journalctl -o json``).

:class:`TargetLogsEvidence` sits among the reasoners (it gives no hypothesis of its own). For an
incident's firing signals from ``container`` and ``systemd`` probes, it reads the logs of the
target their ``container`` or ``unit`` label names — only targets the configuration declares,
so a signal cannot make heald read anything else — and adds the last lines as evidence.
"""

from __future__ import annotations

from heald.config import HealdConfig
from heald.models import Incident, Signal, SignalStatus
from heald.targets import TargetError
from heald.targets import containers as ct
from heald.targets import systemd as sd


class TargetLogsEvidence:
    """A reasoner that only gathers evidence (see the module docstring); at most
    ``max_lines`` lines per target, the newest."""

    name = "target-logs"

    def __init__(self, config: HealdConfig, max_lines: int = 8):
        self.config = config
        self.max_lines = max_lines

    def diagnose(self, incident: Incident, signals: list[Signal]) -> None:
        """No hypothesis: this reasoner only adds evidence (:meth:`evidence`)."""
        return None

    def targets(self, signals: list[Signal]) -> list[tuple[str, str]]:
        """The declared (kind, name) targets the firing ``signals`` name, without repeats."""
        out: list[tuple[str, str]] = []
        for s in signals:
            if s.status != SignalStatus.firing or s.source != "probe":
                continue
            kind = s.labels.get("probe_type")
            if kind == "container" and s.labels.get("container") in self.config.containers:
                pair = ("container", s.labels["container"])
            elif kind == "systemd" and s.labels.get("unit") in self.config.systemd_units:
                pair = ("unit", s.labels["unit"])
            else:
                continue
            if pair not in out:
                out.append(pair)
        return out

    def evidence(self, incident: Incident, signals: list[Signal]) -> list[str]:
        """Evidence lines ``container web: <log line>`` / ``unit web: <journal line>``, or why
        the log could not be read. Never raises."""
        lines: list[str] = []
        for kind, name in self.targets(signals):
            try:
                if kind == "container":
                    cfg = self.config.containers[name]
                    tail = ct.logs_tail(cfg, min(cfg.log_lines, self.max_lines))
                else:
                    unit = self.config.systemd_units[name]
                    tail = sd.journal_tail(unit, sd.runner_for(unit, self.config, name),
                                           min(unit.journal_lines, self.max_lines))
            except TargetError as exc:
                lines.append(f"{kind} {name}: its log could not be read ({exc})"[:1000])
                continue
            if not tail:
                lines.append(f"{kind} {name}: its log is empty")
            lines.extend(f"{kind} {name}: {line}"[:1000] for line in tail[-self.max_lines:])
        return lines


def target_logs_evidence(config: HealdConfig) -> list[TargetLogsEvidence]:
    """The evidence gatherer for ``config``: one when it declares containers or systemd units."""
    return [TargetLogsEvidence(config)] if config.containers or config.systemd_units else []
