"""Scenario 5: a restart that does not take (issue 12 §5). nginx's configuration is broken
(as a bad edit would) and nginx crashes; heald's restart starts an nginx that exits at once
with ``[emerg] unknown directive``. Each such restart is a failed action carrying nginx's last
output lines as evidence, the restarts back off (each wait longer than the one before), the
incident does not claim a heal, and nothing restarts nginx outside the incident's workflow."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.conftest import wait_for
from tests.scenarios.conftest import TERMINAL, Scenario, free_port, http_probe, http_status, managed, nginx_command

pytestmark = [pytest.mark.scenario, pytest.mark.slow]

BAD = "this_is_not_a_directive on;\n"


def test_a_service_that_exits_right_after_its_restart_is_a_failed_action_with_evidence(scenario: Scenario) -> None:
    port = free_port()
    ndir = scenario.dir / "nginx"
    heald = scenario.heald(
        {"web": managed(nginx_command(ndir, port), http_probe(f"http://127.0.0.1:{port}/healthz"),
                        start_period_seconds=1.5, restart_backoff_max_seconds=30.0)},
        healing={"max_attempts": 8, "retry_delay_seconds": 1.0},
        # the breaker (after 3 failures, or by failure rate) would hand it to a human; let the back-off show first
        policy={"budgets": {"breaker_failures": 10, "breaker_window_seconds": 0}}).start()
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=30, what="nginx to answer")
    conf = ndir / "nginx.conf"
    conf.write_text(BAD + conf.read_text())
    scenario.watch.fault()
    heald.crash("web")
    inc = heald.wait_incident(lambda i: i["service"] == "web", timeout=30, what="an incident about web")
    scenario.watch.mark("detect")
    inc = heald.wait_state(inc["id"], TERMINAL | {"awaiting_approval", "needs_attention"}, timeout=60)
    scenario.watch.mark("closed")
    detail = heald.incident(inc["id"])
    actions = [a for a in detail["actions"] if a["remedy"] == "restart_process"]
    assert actions, detail["actions"]
    assert all(a["status"] == "failed" for a in actions), [(a["attempt"], a["status"], a["output"][:200]) for a in actions]
    started = [a for a in actions if 'unknown directive "this_is_not_a_directive"' in a["output"]]
    assert started, f"no failed restart carries nginx's own error: {[a['output'][:300] for a in actions]}"
    assert inc["state"] != "resolved", inc
    assert not [o for o in detail["outcomes"] if o["result"] == "healed"], detail["outcomes"]
    # nothing but these actions started nginx: one [emerg] line per restart that started it
    log = (heald.state_dir / "services" / "web.log").read_text(errors="replace")
    assert log.count('unknown directive "this_is_not_a_directive"') == len(started), (
        log.count('unknown directive "this_is_not_a_directive"'), len(started))
    # back-off: the waits between the restarts that started nginx grow
    times = [datetime.fromisoformat(a["started_at"]).timestamp() for a in started]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(started) >= 3, f"only {len(started)} restart(s) started nginx: {[a['output'][:120] for a in actions]}"
    assert all(g2 > g1 for g1, g2 in zip(gaps, gaps[1:], strict=False)), f"restarts did not back off: gaps {gaps}"
    scenario.note(f"restarts={len(started)} gaps={'/'.join(f'{g:.1f}' for g in gaps)}s")
