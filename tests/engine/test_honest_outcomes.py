"""Honest outcomes (issue 12, item 8): an incident says what really happened.

A target that recovers on its own after a remedy failed its verification is not healed; an
approval wait ends when every signal resolves; a flapping service is never called healed.
Real processes, real TCP, SQLite and DBOS, in process.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from heald.budgets import breakers
from heald.learn import learned
from heald.models import IncidentState, OutcomeResult, SignalStatus
from heald.store import InvalidTransition
from tests.conftest import free_port, make_config, wait_for
from tests.engine.test_workflow import alert, runbook, sleeper_config, terminal, workflow_done

PY = sys.executable


def test_recovery_after_a_failed_verification_is_not_a_heal(tmp_path: Path, start_runtime) -> None:
    """The remedy fails its verification; the alert then resolves at its source before the next
    attempt: the incident ends resolved as "recovered on its own after a failed remedy", with the
    outcome recovered_unaided, and learning credits the remedy nothing."""
    dead_port = free_port()
    cfg = make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": dead_port, "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1}]}},
        runbooks=[str(runbook(tmp_path))],
        healing={"max_attempts": 3, "retry_delay_seconds": 2.0, "verify_timeout_seconds": 0.4})
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: any(not v.passed for v in rt.store.verifications_for(inc_id)), what="a failed verification")
    rt.ingest(alert(SignalStatus.resolved))  # the target came back by itself, during the retry delay
    done = wait_for(lambda: terminal(rt, inc_id), timeout=30, what="incident to end")
    assert done.state == IncidentState.resolved
    assert "recovered on its own after a failed remedy" in done.closed_reason
    assert "before heald acted" not in done.closed_reason
    assert len(rt.store.actions_for(inc_id)) == 1  # nothing acted on a resolved alert
    final = [o for o in rt.store.outcomes(incident_id=inc_id) if o.attempt == 0]
    assert [o.result for o in final] == [OutcomeResult.recovered_unaided]
    assert OutcomeResult.healed not in [o.result for o in rt.store.outcomes(incident_id=inc_id)]
    assert learned(rt.store)["svc_broken"]["restart_process"].successes == 0
    assert rt.store.recovery_times() == []  # not a heal: no time to recover is reported for it


def test_approval_wait_ends_when_every_signal_resolves(tmp_path: Path, start_runtime) -> None:
    """An incident awaiting approval whose alert resolves ends at once (not at the approval TTL
    of an hour): resolved, audited as approval.withdrawn, nothing applied, and a late approval
    is refused."""
    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    assert rt.config.healing.approval_ttl_seconds >= 3600
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    rt.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt, inc_id), timeout=20, what="the approval wait to end")
    assert done.state == IncidentState.resolved, done.closed_reason
    assert "before heald acted" in done.closed_reason
    assert rt.store.actions_for(inc_id) == []
    events = [e.event for e in rt.store.audit_entries(incident_id=inc_id)]
    assert "approval.withdrawn" in events and "approval.expired" not in events
    wait_for(lambda: workflow_done(inc_id), what="the workflow to return")
    with pytest.raises(InvalidTransition):
        rt.approve(inc_id, "alice", "approve")
    assert rt.store.actions_for(inc_id) == []
    assert rt.store.verify_audit().intact


def test_a_probe_firing_before_a_restart_resolves_after_it(tmp_path: Path, start_runtime) -> None:
    """A tcp probe fires (nothing listens on its port), heald stops with the incident awaiting
    approval; the port comes up while heald is down; a new heald on the same state resolves the
    probe's signal (same fingerprint) at its first pass, and the incident ends without acting."""
    port = free_port()
    cfg = make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": port, "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 2, "alertname": "SvcBroken"}]}},
        runbooks=[str(runbook(tmp_path))], policy={"auto": False})
    rt = start_runtime(cfg)
    inc = wait_for(lambda: rt.store.list_incidents(), what="the probe's incident")[0]
    wait_for(lambda: rt.store.get_incident(inc.id).state == IncidentState.awaiting_approval, what="approval wait")
    [fired] = rt.store.signals_for(inc.id)
    assert fired.status == SignalStatus.firing and fired.source == "probe"
    rt.stop()

    with socket.create_server(("127.0.0.1", port)):  # the service came back while heald was down
        rt2 = start_runtime(cfg)
        done = wait_for(lambda: terminal(rt2, inc.id), what="the incident to end after the restart")
        signals = rt2.store.signals_for(inc.id)
        assert [s.status for s in signals] == [SignalStatus.firing, SignalStatus.resolved]
        assert signals[1].fingerprint == fired.fingerprint
        assert done.state == IncidentState.resolved and rt2.store.actions_for(inc.id) == []
        assert len(rt2.store.list_incidents()) == 1


#: A service whose TCP port flaps by the wall clock: listening for UP seconds, closed for DOWN
#: seconds, over and over; a restart does not change the phase (argv: port, up, down).
FLAPPER = textwrap.dedent("""
    import socket, sys, time
    port, up, down = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    srv = None
    while True:
        if time.time() % (up + down) < up:
            if srv is None:
                srv = socket.create_server(("127.0.0.1", port))
                srv.settimeout(0.02)
            try:
                srv.accept()[0].close()
            except OSError:
                pass
        else:
            if srv is not None:
                srv.close()
                srv = None
            time.sleep(0.02)
""")

#: A service that alternates by start: odd starts listen on the port for UP seconds and exit,
#: even starts exit at once without listening (argv: port, up, counter file).
EVERY_OTHER_START = textwrap.dedent("""
    import pathlib, socket, sys, time
    port, up, counter = int(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
    n = int(counter.read_text() or 0) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    if n % 2 == 0:
        time.sleep(0.3)
        sys.exit(1)
    with socket.create_server(("127.0.0.1", port)) as srv:
        srv.settimeout(0.02)
        end = time.monotonic() + up
        while time.monotonic() < end:
            try:
                srv.accept()[0].close()
            except OSError:
                pass
""")


def probed_service(tmp_path: Path, command: list[str], port: int, budgets: dict[str, float] | None = None,
                   **healing: float):  # type: ignore[no-untyped-def]
    return make_config(tmp_path, services={"svc": {
        "command": command, "start_period_seconds": 0.2,
        "probes": [{"type": "tcp", "port": port, "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1, "alertname": "SvcBroken"}]}},
        runbooks=[str(runbook(tmp_path))],
        healing={"max_attempts": 2, "retry_delay_seconds": 0.5, **healing},
        policy={"auto_min_confidence": 0.8, "budgets": {"remedy_cooldown_seconds": 0, **(budgets or {})}})


def test_a_flapping_service_is_never_called_healed(tmp_path: Path, start_runtime) -> None:
    """A real process whose port is up 0.8 s, down 0.4 s: no verification can pass (the checks
    must hold 1 s). Whatever phase the next attempt meets, an incident heald acted on ends
    escalated or "recovered on its own after a failed remedy" — never healed, never "resolved
    before heald acted" — learning credits the restart nothing, and the breaker opens on the
    failure rate (3 verified remedies, all failed) long before 10 failures in a row."""
    port = free_port()
    cfg = probed_service(tmp_path, [PY, "-c", FLAPPER, str(port), "0.8", "0.4"], port,
                         budgets={"breaker_failures": 10, "breaker_min_attempts": 3},
                         stabilization_seconds=1.0, verify_timeout_seconds=2.5)
    rt = start_runtime(cfg)

    def acted_and_ended() -> list[int]:
        return [i.id for i in rt.store.list_incidents() if i.state.terminal and rt.store.actions_for(i.id)]

    wait_for(lambda: len(acted_and_ended()) >= 2, timeout=60, what="two incidents heald acted on to end")
    for inc_id in acted_and_ended():
        inc = rt.store.get_incident(inc_id)
        final = [o.result.value for o in rt.store.outcomes(incident_id=inc_id) if o.attempt == 0]
        assert "before heald acted" not in (inc.closed_reason or ""), inc.closed_reason
        assert final in (["recovered_unaided"], ["escalated"]), (final, inc.closed_reason)
        if final == ["recovered_unaided"]:
            assert inc.state == IncidentState.resolved
            assert "recovered on its own after a failed remedy" in (inc.closed_reason or "")
    assert all(not v.passed for i in acted_and_ended() for v in rt.store.verifications_for(i))
    assert learned(rt.store)["svc_broken"]["restart_process"].successes == 0
    [breaker] = wait_for(lambda: [b for b in breakers(rt.store) if b["state"] == "open"], timeout=30,
                         what="the breaker to open")
    assert "failure rate 100%" in breaker["opened_reason"] and breaker["failures"] < 10


def test_a_flapping_service_opens_the_breaker_by_failure_rate(tmp_path: Path, start_runtime) -> None:
    """Every other restart of a real process dies at once: fail, pass, fail, pass… never two
    failures in a row, so the consecutive-failure rule (3) never trips; 2 failures in 4 verified
    remedies within the window do (breaker_failure_rate 0.5, breaker_min_attempts 4). The next
    incident then waits for a human instead of restarting it again."""
    port = free_port()
    counter = tmp_path / "starts"
    cfg = probed_service(tmp_path, [PY, "-c", EVERY_OTHER_START, str(port), "3.0", str(counter)], port,
                         budgets={"breaker_failures": 3, "breaker_window_seconds": 600, "breaker_failure_rate": 0.5,
                                  "breaker_min_attempts": 4},
                         stabilization_seconds=0.3, verify_timeout_seconds=1.5)
    rt = start_runtime(cfg)

    opened = wait_for(lambda: [b for b in breakers(rt.store) if b["state"] == "open"], timeout=90,
                      what="the breaker to open")
    assert opened[0]["target"] == "service:svc"
    assert "of the last 4 remedies verified within 10m failed (failure rate 50%" in opened[0]["opened_reason"]
    verdicts = [v.passed for i in rt.store.list_incidents() for v in rt.store.verifications_for(i.id)]
    assert verdicts.count(True) >= 1 and verdicts.count(False) >= 1
    waiting = wait_for(lambda: [i for i in rt.store.list_incidents() if i.state == IncidentState.awaiting_approval],
                       timeout=30, what="the next incident to wait for a human")
    decision = rt.store.decisions_for(waiting[0].id)[-1]
    assert "circuit breaker open for service:svc" in decision["reason"]


def test_an_alertmanager_resolution_ends_the_approval_wait(tmp_path: Path, start_runtime) -> None:
    """The same over HTTP: Alertmanager (webhook version 4) sends the alert firing, the incident
    waits for an approval, Alertmanager sends it resolved: the wait ends at once, audited."""
    from tests.conftest import CORPUS, serving

    def payload(name: str) -> bytes:
        data = json.loads((CORPUS / "alertmanager" / name).read_bytes())
        for a in data["alerts"]:
            a["labels"] = {**a["labels"], "alertname": "SvcBroken", "service": "svc"}
        return json.dumps(data).encode()

    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    with serving(rt) as client:
        r = client.post("/v1/webhooks/alertmanager", content=payload("received.json"),
                        headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        inc_id = r.json()["accepted"][0]["incident_id"]
        wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
        r = client.post("/v1/webhooks/alertmanager", content=payload("received-resolved.json"),
                        headers={"content-type": "application/json"})
        assert r.status_code == 202 and r.json()["accepted"][0]["incident_id"] == inc_id
        done = wait_for(lambda: terminal(rt, inc_id), what="the approval wait to end")
        assert done.state == IncidentState.resolved and rt.store.actions_for(inc_id) == []
        assert "approval.withdrawn" in [e.event for e in rt.store.audit_entries(incident_id=inc_id)]
        detail = client.get(f"/v1/incidents/{inc_id}")
        assert detail.status_code == 200 and detail.json()["incident"]["state"] == "resolved"
