"""Scenario 3: heald never heals itself, however the alert names it (issue 12 §7,
DESIGN.md invariant 7). Prometheus scrapes heald's own ``/metrics`` as job ``heald`` and a
memory rule in the community style fires about it; heald is not declared as a service. The
alert must open an incident that plans and applies no remedy on heald (no approval asked for
one either) and ends with a human, while heald keeps running as the same process."""

from __future__ import annotations

import pytest

from tests.scenarios.conftest import TERMINAL, Scenario, free_port, managed, redis_command, tcp_probe

pytestmark = [pytest.mark.scenario, pytest.mark.slow]

#: In the style of awesome-prometheus-alerts' host and process memory rules; the threshold is
#: low so that it fires at once. Its name matches the shipped memory runbook (restart_process).
RULES = [
    {"alert": "HighMemoryUsage", "expr": 'process_resident_memory_bytes{job="heald"} > 1e6', "for": "0m",
     "labels": {"severity": "warning"},
     "annotations": {"summary": "High memory usage (instance {{ $labels.instance }})",
                     "description": "Process memory is above 1 MB\n  VALUE = {{ $value }}\n  LABELS = {{ $labels }}"}},
]


def test_an_alert_naming_heald_itself_gets_no_remedy(scenario: Scenario) -> None:
    redis_port = free_port()
    # one managed service, so that heald has something a restart_process could name
    heald = scenario.heald({"redis": managed(redis_command(scenario.dir / "redis", redis_port),
                                             tcp_probe(redis_port))}).start()
    pid = heald.proc.pid  # type: ignore[union-attr]
    mon = scenario.monitoring(heald, rules=RULES, scrape_configs=[
        {"job_name": "heald", "static_configs": [{"targets": [f"127.0.0.1:{heald.port}"]}]}])
    mon.start()
    scenario.watch.fault()  # from Prometheus' start: the rule fires on its first evaluation
    inc = heald.wait_incident(lambda i: any(s in (i["service"] or "") + i["title"] for s in ("heald", "High memory")),
                              timeout=30, what="an incident about heald's memory")
    scenario.watch.mark("detect")
    inc = heald.wait_state(inc["id"], TERMINAL | {"awaiting_approval"}, timeout=40)
    scenario.watch.mark("decided")
    detail = heald.incident(inc["id"])
    assert any(s["source"] == "alertmanager" and s["labels"].get("job") == "heald" for s in detail["signals"])
    assert detail["actions"] == [], (
        f"heald acted on itself: {[(a['remedy'], a['params'], a['status']) for a in detail['actions']]}")
    planned = [c for p in detail["plans"] for c in p.get("candidates", [])]
    assert not planned, f"a remedy on heald itself was planned: {planned}"
    assert not [d for d in detail["decisions"] if d["kind"] in ("auto", "approval")], detail["decisions"]
    assert inc["state"] == "escalated", (inc["state"], inc.get("closed_reason"))
    reasons = " ".join([inc.get("closed_reason") or ""] + [d["reason"] for d in detail["decisions"]])
    assert "heald" in reasons, f"the escalation does not say the alert is about heald itself: {reasons}"
    assert heald.proc.poll() is None and heald.proc.pid == pid and heald.healthy()  # type: ignore[union-attr]
    assert not heald.audit(event="action.started"), "an action started"
