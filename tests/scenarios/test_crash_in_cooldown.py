"""Scenario 1: redis-server crashes, heald restarts it; it crashes again inside the
cross-incident remedy cooldown (``policy.budgets.remedy_cooldown_seconds``). The second crash
must not be escalated and forgotten while redis stays down (issue 12 §3): heald waits the
cooldown out and restarts it (healed), or hands it to a human with the incident still open
and keeps reminding the notification channel while redis is down."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.conftest import wait_for
from tests.scenarios.conftest import (
    TERMINAL,
    Receiver,
    Scenario,
    free_port,
    managed,
    redis_command,
    redis_ping,
    tcp_probe,
)

pytestmark = [pytest.mark.scenario, pytest.mark.slow]

COOLDOWN = 8.0
#: How long after the second crash redis may stay down before the scenario calls it abandoned.
GRACE = 25.0


def test_a_crash_repeated_inside_the_cooldown_is_never_silently_abandoned(scenario: Scenario) -> None:
    port = free_port()
    receiver = Receiver()
    scenario.cleanups.append(receiver.close)
    heald = scenario.heald({"redis": managed(redis_command(scenario.dir / "redis", port), tcp_probe(port))},
                           policy={"budgets": {"remedy_cooldown_seconds": COOLDOWN}},
                           notifications={"channels": [receiver.channel()]}).start()
    wait_for(lambda: redis_ping(port), timeout=30, what="redis to answer")

    # first crash: healed at once
    scenario.watch.fault()
    heald.crash("redis")
    first = heald.wait_incident(lambda i: i["service"] == "redis", timeout=30, what="the first redis incident")
    scenario.watch.mark("detect1")
    first = heald.wait_state(first["id"], TERMINAL, timeout=40)
    assert first["state"] == "resolved", first
    assert redis_ping(port)
    scenario.watch.mark("recover1")
    restart1 = [a for a in heald.actions(first["id"]) if a["remedy"] == "restart_process" and a["status"] == "succeeded"]
    assert restart1, heald.actions(first["id"])
    t1 = datetime.fromisoformat(restart1[0]["started_at"]).timestamp()

    # second crash, inside the cooldown of the first restart
    scenario.watch.fault()
    heald.crash("redis")
    second = heald.wait_incident(lambda i: i["service"] == "redis" and i["id"] != first["id"], timeout=30,
                                 what="a second redis incident")
    scenario.watch.mark("detect2")
    deadline = time.monotonic() + COOLDOWN + GRACE
    while time.monotonic() < deadline and not redis_ping(port):
        time.sleep(0.25)
    later = [i for i in heald.incidents() if i["service"] == "redis" and i["id"] != first["id"]]
    if redis_ping(port):
        # healed: by a restart of a redis incident's workflow, once the cooldown allowed it
        scenario.watch.mark("recover2")
        def healers() -> dict[int, list[dict]]:  # type: ignore[type-arg]
            incs = [i for i in heald.incidents() if i["service"] == "redis" and i["id"] != first["id"]]
            return {i["id"]: [a for a in heald.actions(i["id"])
                              if a["remedy"] == "restart_process" and a["status"] == "succeeded"] for i in incs}

        by_incident = wait_for(lambda: (h := healers()) and any(h.values()) and h, timeout=10,
                               what="the restart that brought redis back, in a redis incident")
        restarts = [a for acts in by_incident.values() for a in acts]
        assert min(datetime.fromisoformat(a["started_at"]).timestamp() for a in restarts) >= t1 + COOLDOWN - 0.5
        healer = max(i for i, acts in by_incident.items() if acts)
        final = heald.wait_state(healer, TERMINAL, timeout=30)
        assert final["state"] == "resolved", final
        scenario.note("healed after the cooldown")
        return
    # not healed: then a human must have it, the incident still open, with reminders
    detail = heald.incident(second["id"])
    still_open = [i for i in later if i["state"] not in TERMINAL]
    reminders = receiver.about(second["id"])
    assert still_open and len(reminders) >= 2, (
        f"redis left down {COOLDOWN + GRACE:g} s after its second crash and abandoned: incident {second['id']} is "
        f"{detail['incident']['state']} ({detail['incident'].get('closed_reason')}); open redis incidents: "
        f"{[(i['id'], i['state']) for i in still_open]}; messages about it: {len(reminders)}")
    scenario.note("handed to a human with reminders")
