"""Scenario 3: heald never heals itself, however the alert names it (issue 12 §7,
DESIGN.md invariant 7). Prometheus scrapes heald's own ``/metrics`` as job ``heald`` (and a
second, dead heald address in the same job); two rules in the community style fire about it:
a memory rule and ``InstanceDown``. heald is not declared as a service. Each alert must end
with a human, with no remedy planned, approved or applied on heald, while heald keeps running
as the same process."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for
from tests.scenarios.conftest import TERMINAL, Scenario, free_port, managed, redis_command, tcp_probe

pytestmark = [pytest.mark.scenario, pytest.mark.slow]

#: In the style of awesome-prometheus-alerts (its host/process memory rules, and Prometheus'
#: documentation's ``InstanceDown``); the memory threshold is low so that it fires at once. The
#: memory alert's name matches the shipped memory runbook (whose remedy is restart_process).
RULES = [
    {"alert": "HighMemoryUsage", "expr": 'process_resident_memory_bytes{job="heald"} > 1e6', "for": "0m",
     "labels": {"severity": "warning"},
     "annotations": {"summary": "High memory usage (instance {{ $labels.instance }})",
                     "description": "Process memory is above 1 MB\n  VALUE = {{ $value }}\n  LABELS = {{ $labels }}"}},
    {"alert": "InstanceDown", "expr": "up == 0", "for": "0m", "labels": {"severity": "critical"},
     "annotations": {"summary": "Instance {{ $labels.instance }} down",
                     "description": "{{ $labels.instance }} of job {{ $labels.job }} has been down"}},
]


def test_alerts_naming_heald_itself_get_no_remedy(scenario: Scenario) -> None:
    redis_port = free_port()
    # one managed service, so that heald has something a restart_process could name
    heald = scenario.heald({"redis": managed(redis_command(scenario.dir / "redis", redis_port),
                                             tcp_probe(redis_port))}).start()
    pid = heald.proc.pid  # type: ignore[union-attr]
    dead_worker = f"127.0.0.1:{free_port()}"  # a second heald worker's address, nobody listening
    mon = scenario.monitoring(heald, rules=RULES, scrape_configs=[
        {"job_name": "heald", "static_configs": [{"targets": [f"127.0.0.1:{heald.port}", dead_worker]}]}])
    mon.start()
    scenario.watch.fault()  # from Prometheus' start: the rules fire on their first evaluations

    def alertnames() -> dict[str, int]:
        seen = {}
        for inc in heald.incidents():
            for s in heald.incident(inc["id"])["signals"]:
                if s["source"] == "alertmanager" and s["labels"].get("job") == "heald":
                    seen[s["labels"]["alertname"]] = inc["id"]
        return seen

    seen = wait_for(lambda: (a := alertnames()) and len(a) == 2 and a, timeout=30,
                    what="both alerts about heald to reach an incident")
    scenario.watch.mark("detect")
    ids = sorted(set(seen.values()))
    for i in ids:
        heald.wait_state(i, TERMINAL | {"awaiting_approval", "needs_attention"}, timeout=40)
    scenario.watch.mark("decided")
    for i in ids:
        detail: dict[str, Any] = heald.incident(i)
        inc = detail["incident"]
        assert detail["actions"] == [], (
            f"heald acted on itself: {[(a['remedy'], a['params'], a['status']) for a in detail['actions']]}")
        planned = [c for p in detail["plans"] for c in p.get("candidates", [])]
        assert not planned, f"a remedy on heald itself was planned for incident {i}: {planned}"
        assert not [d for d in detail["decisions"] if d["kind"] in ("auto", "approval")], detail["decisions"]
        # handed to a human while the alert still fires (needs_attention), never acted on
        assert inc["state"] in ("needs_attention", "escalated"), (i, inc["state"], inc.get("closed_reason"))
        reasons = " ".join([inc.get("closed_reason") or ""] + [d["reason"] for d in detail["decisions"]])
        assert "heald" in reasons, f"the escalation of incident {i} does not say it is about heald itself: {reasons}"
    assert heald.proc.poll() is None and heald.proc.pid == pid and heald.healthy()  # type: ignore[union-attr]
    assert not heald.audit(event="action.started"), "an action started"
