"""Scenario 6: heald is killed and restarted while an incident awaits approval (issue 12 §4,
DESIGN.md invariant 1). redis-server crashes; every remedy needs an approval; heald is
SIGKILLed while the restart waits for it, and started again. Nothing may start redis until a
human approves — not the supervisor at start-up, not a second ``heald serve`` started by
mistake on the same state (it must refuse to run) — and the approved restart then heals it,
once, and the probe signal that was firing across heald's restart resolves."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.conftest import free_port as any_port
from tests.conftest import wait_for
from tests.scenarios.conftest import TERMINAL, Scenario, free_port, managed, redis_command, redis_ping, tcp_probe

pytestmark = [pytest.mark.scenario, pytest.mark.slow]


def probe_ran(url: str, service: str) -> bool:
    """heald's own /metrics has a result of its probe of ``service`` (heald_probe_up)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=2).text
    except httpx.HTTPError:
        return False
    pattern = r'^heald_probe_up\{[^}]*service="' + re.escape(service) + r'"[^}]*\} [01](\.0)?$'
    return bool(re.search(pattern, text, re.M))


def stays_down(port: int, seconds: float) -> bool:
    """redis does not answer at any time during ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if redis_ping(port, timeout=0.2):
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_heald_restarted_while_awaiting_approval_acts_only_once_approved(scenario: Scenario, db: str,
                                                                         request: pytest.FixtureRequest) -> None:
    port = free_port()
    store = {"database_url": request.getfixturevalue("pg_url")} if db == "postgresql" else {}
    heald = scenario.heald({"redis": managed(redis_command(scenario.dir / "redis", port), tcp_probe(port))},
                           policy={"auto": False}, **store).start()
    wait_for(lambda: redis_ping(port), timeout=30, what="redis to answer")
    scenario.watch.fault()
    heald.crash("redis")
    inc = heald.wait_incident(lambda i: i["service"] == "redis", timeout=30, what="a redis incident")
    scenario.watch.mark("detect")
    inc = heald.wait_state(inc["id"], {"awaiting_approval"} | TERMINAL, timeout=30)
    assert inc["state"] == "awaiting_approval", inc

    heald.kill()
    assert not redis_ping(port)
    heald.start()
    wait_for(lambda: probe_ran(heald.url, "redis"), timeout=30, what="heald's probe of redis to run again")
    assert stays_down(port, 3.0), "redis was started after heald's restart, before any approval"
    detail = heald.incident(inc["id"])
    assert detail["incident"]["state"] == "awaiting_approval", detail["incident"]
    assert detail["actions"] == [], detail["actions"]

    # a second heald on the same state, started by mistake, must refuse before acting
    second = heald.spawn("--port", str(any_port()))
    try:
        rc = second.wait(timeout=20)
    except Exception:
        second.kill()
        second.wait(timeout=10)
        rc = None
    assert rc not in (None, 0), "a second heald serve on the same state directory kept running"
    assert stays_down(port, 1.0), "the second heald started redis"
    assert heald.incident(inc["id"])["actions"] == []

    # the approval: now, and only now, redis is restarted — once
    scenario.watch.mark("approved")
    r = heald.post(f"/v1/incidents/{inc['id']}/approve", {"comment": "scenario: go"})
    assert r.status_code == 200, (r.status_code, r.text)
    inc = heald.wait_state(inc["id"], TERMINAL, timeout=40)
    scenario.watch.mark("recover")
    detail = heald.incident(inc["id"])
    assert inc["state"] == "resolved", (inc, [d["reason"] for d in detail["decisions"]])
    restarts = [a for a in detail["actions"] if a["remedy"] == "restart_process"]
    assert len(restarts) == 1 and restarts[0]["status"] == "succeeded", restarts
    assert redis_ping(port)
    # the probe signal that was firing when heald was killed resolves (probe state survives the restart)
    wait_for(lambda: [g for g in heald.incident(inc["id"])["signals"] if g["source"] == "probe" and g["status"] == "resolved"],
             timeout=15, what="the redis probe's signal to resolve after heald's restart")
    approvals = [e for e in heald.audit(incident_id=inc["id"]) if "approv" in e.event]
    started = [e for e in heald.audit(incident_id=inc["id"]) if e.event == "action.started"]
    assert approvals and started and approvals[0].seq < started[0].seq
