"""Scenario 2: one root cause, one incident (issue 12 §6). nginx (``web``) proxies to an app
that needs redis; redis-server crashes. Three sources see it: heald's own TCP probe of redis,
Prometheus' ``RedisDown`` (Debian's redis_exporter, the rule as community rule sets write it)
and the blackbox exporter's ``BlackboxProbeHttpFailure`` on web (the 503 the app answers
without redis, through nginx). They must make one incident about redis, healed by restarting
redis — never a separate incident for web or for the alert's name."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import wait_for
from tests.scenarios.conftest import (
    TERMINAL,
    Scenario,
    app_command,
    blackbox_job,
    free_port,
    http_probe,
    http_status,
    managed,
    nginx_command,
    redis_command,
    redis_ping,
    tcp_probe,
)

pytestmark = [pytest.mark.scenario, pytest.mark.slow]

#: As awesome-prometheus-alerts writes them (rules/redis/oliver006-redis-exporter and
#: rules/blackbox/blackbox-exporter), with the scenario's `for: 0m`.
RULES = [
    {"alert": "RedisDown", "expr": "redis_up == 0", "for": "0m", "labels": {"severity": "critical"},
     "annotations": {"summary": "Redis down (instance {{ $labels.instance }})",
                     "description": "Redis instance is down\n  VALUE = {{ $value }}\n  LABELS = {{ $labels }}"}},
    {"alert": "BlackboxProbeHttpFailure", "expr": "probe_http_status_code <= 199 or probe_http_status_code >= 400",
     "for": "0m", "labels": {"severity": "critical"},
     "annotations": {"summary": "Blackbox probe HTTP failure (instance {{ $labels.instance }})",
                     "description": "HTTP status code is not 200-399\n  VALUE = {{ $value }}\n  LABELS = {{ $labels }}"}},
]


def query(prom: str, expr: str) -> list[dict]:  # type: ignore[type-arg]
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    return list(r.json()["data"]["result"]) if r.status_code == 200 else []


def test_a_dependency_down_is_one_incident_healed_on_the_dependency(scenario: Scenario) -> None:
    redis_port, app_port, web_port = free_port(), free_port(), free_port()
    scenario.spawn("app", app_command(app_port, redis_port))
    heald = scenario.heald(
        {"redis": managed(redis_command(scenario.dir / "redis", redis_port), tcp_probe(redis_port)),
         "web": managed(nginx_command(scenario.dir / "nginx", web_port, upstream_port=app_port),
                        http_probe(f"http://127.0.0.1:{web_port}/healthz"), depends_on=["redis"])},
        # Alertmanager's alerts take a scrape, an evaluation and a send to arrive: the incident
        # waits that long for more signals before its diagnosis, as Alertmanager's group_wait.
        healing={"group_wait_seconds": 5.0})
    heald.start()
    wait_for(lambda: redis_ping(redis_port) and http_status(f"http://127.0.0.1:{web_port}/") == 200, timeout=30,
             what="redis, the app and nginx to answer")
    mon = scenario.monitoring(heald, rules=RULES)
    exporter = mon.redis_exporter(redis_port)
    blackbox = mon.blackbox_exporter()
    mon.scrape_configs = [
        {"job_name": "redis", "static_configs": [{"targets": [f"127.0.0.1:{exporter}"], "labels": {"service": "redis"}}]},
        blackbox_job("blackbox-http", blackbox, f"http://127.0.0.1:{web_port}/", service="web"),
    ]
    mon.start()
    wait_for(lambda: [r for r in query(mon.prometheus_url, "redis_up") if r["value"][1] == "1"]
             and [r for r in query(mon.prometheus_url, "probe_http_status_code") if r["value"][1] == "200"],
             timeout=30, what="Prometheus to see redis up and web answering 200")
    before = {i["id"] for i in heald.incidents()}

    scenario.watch.fault()
    heald.crash("redis")
    inc = heald.wait_incident(lambda i: i["id"] not in before, timeout=30, what="an incident")
    scenario.watch.mark("detect")
    inc = heald.wait_state(inc["id"], TERMINAL, timeout=60)
    scenario.watch.mark("closed")
    detail = heald.incident(inc["id"])
    signals = detail["signals"]
    names = {(s["source"], s["labels"].get("alertname"), s["service"]) for s in signals}
    new = [i for i in heald.incidents() if i["id"] not in before]
    assert [i["id"] for i in new] == [inc["id"]], (
        f"one root cause made {len(new)} incidents: {[(i['id'], i['service'], i['title'], i['state']) for i in new]}")
    assert inc["service"] == "redis", inc
    assert any(s["source"] == "probe" and s["service"] == "redis" for s in signals), names
    assert any(s["source"] == "alertmanager" and s["labels"].get("alertname") == "RedisDown" for s in signals), names
    assert any(s["source"] == "alertmanager" and s["labels"].get("alertname") == "BlackboxProbeHttpFailure"
               and s["labels"].get("service") == "web" for s in signals), names
    restarts = [a for a in detail["actions"] if a["remedy"] == "restart_process"]
    assert restarts and all(a["params"].get("service") == "redis" for a in restarts), detail["actions"]
    assert inc["state"] == "resolved", (inc, [d["reason"] for d in detail["decisions"]])
    assert redis_ping(redis_port) and http_status(f"http://127.0.0.1:{web_port}/") == 200
    scenario.watch.marks["recover"] = inc["time_to_recover_s"] or -1.0

    # the alerts resolve; their resolved notifications (and any late firing one) open nothing new
    wait_for(lambda: not mon.firing(), timeout=30, what="Alertmanager's alerts to resolve")
    end = time.monotonic() + 3  # two group_intervals: the resolved notifications are sent
    while time.monotonic() < end:
        time.sleep(0.25)
    new = [i for i in heald.incidents() if i["id"] not in before]
    assert [i["id"] for i in new] == [inc["id"]], [(i["id"], i["service"], i["title"], i["state"]) for i in new]
