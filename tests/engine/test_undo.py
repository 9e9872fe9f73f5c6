"""When verification fails: heald undoes the remedy (where it has an undo), tries the next
candidate, and escalates when none is left. The demo shop runs as a real managed service; its
/healthz is made to fail until the shop restarts (the ``healthz_blip`` flag)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import httpx

from heald.models import ActionStatus, IncidentState, OutcomeResult, Signal
from tests.conftest import free_port, make_config, wait_for
from tests.engine.test_workflow import terminal


def setup(tmp_path: Path, start_runtime, with_restart: bool):  # type: ignore[no-untyped-def]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    restart = "      - {remedy: restart_process, risk: low, params: {service: web}}\n" if with_restart else ""
    rb = tmp_path / "runbooks.yaml"
    rb.write_text(textwrap.dedent(f"""
        runbooks:
          - name: web-unhealthy
            match: {{labels: ['alertname="WebUnhealthy"']}}
            diagnosis: {{category: web_unhealthy, confidence: 0.95}}
            remedies:
              - remedy: http_request
                risk: low
                params:
                  method: PUT
                  url: "{base}/admin/flags"
                  body: {{api_errors: false}}
                  undo: {{method: PUT, url: "{base}/admin/flags", body: {{api_errors: true}}}}
    """) + restart)
    cfg = make_config(tmp_path, runbooks=[str(rb)], remedies={"http_allowed_urls": [f"{base}/admin/"]},
                      healing={"verify_timeout_seconds": 1.5, "retry_delay_seconds": 0.1},
                      services={"web": {"command": [sys.executable, "-m", "heald.demo.shop", "--port", str(port)],
                                        "probes": [{"url": f"{base}/healthz", "interval_seconds": 0.2,
                                                    "timeout_seconds": 0.5}]}})
    rt = start_runtime(cfg, run_probes=False)
    wait_for(lambda: _up(base), what="the shop")
    httpx.put(f"{base}/admin/flags", json={"healthz_blip": 100_000}).raise_for_status()  # unhealthy until restarted
    inc = rt.ingest(Signal(source="test", service="web", summary="web unhealthy",
                           labels={"alertname": "WebUnhealthy", "service": "web"})).incident_id
    done = wait_for(lambda: terminal(rt, inc), timeout=60, what="the end")
    return rt, done


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_failed_remedy_is_undone_and_the_next_candidate_heals(tmp_path: Path, start_runtime) -> None:
    rt, done = setup(tmp_path, start_runtime, with_restart=True)
    assert done.state == IncidentState.resolved, done.closed_reason
    actions = rt.store.actions_for(done.id)
    assert [(a.remedy, a.status) for a in actions] == [("http_request", ActionStatus.succeeded),
                                                        ("restart_process", ActionStatus.succeeded)]
    entries = rt.store.audit_entries(incident_id=done.id)
    events = [e.event for e in entries]
    undone = next(e for e in entries if e.event == "action.undone")
    assert '"api_errors": true' in undone.reason  # the shop's flags as the undo left them
    undone_at = events.index("action.undone")
    assert events.index("verification.failed") < undone_at < events.index("action.started", undone_at)
    results = [(o.attempt, o.remedy, o.result) for o in rt.store.outcomes(incident_id=done.id) if o.attempt]
    assert results == [(1, "http_request", OutcomeResult.rolled_back), (2, "restart_process", OutcomeResult.healed)]


def test_with_no_candidate_left_heald_escalates(tmp_path: Path, start_runtime) -> None:
    rt, done = setup(tmp_path, start_runtime, with_restart=False)
    assert done.state == IncidentState.needs_attention  # the target still fails: a human's now
    assert "no remedy left to try" in (done.closed_reason or "")
    [action] = rt.store.actions_for(done.id)  # the undone remedy is not applied again
    assert action.remedy == "http_request"
    dropped = [e.reason for e in rt.store.audit_entries(incident_id=done.id) if e.event == "plan.candidate_dropped"]
    assert any("was undone" in d for d in dropped)
