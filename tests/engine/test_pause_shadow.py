"""The kill switch and shadow mode end to end (issue 17, "Trust, step by step"): a real heald
Runtime on SQLite, a real supervised process, the real healing workflow."""

from __future__ import annotations

from pathlib import Path

from heald import pause
from heald.models import IncidentState, SignalStatus
from tests.conftest import make_config, wait_for
from tests.engine.test_workflow import PY, alert, runbook, terminal

FAST_BLOCK = {"blocked_backoff_initial_seconds": 0.1, "blocked_backoff_max_seconds": 0.2}


def config(tmp_path: Path, risk: str = "low", **kw: object):  # type: ignore[no-untyped-def]
    return make_config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
                       runbooks=[str(runbook(tmp_path, risk=risk))], healing=FAST_BLOCK, **kw)


def events(rt, inc_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.event for e in rt.store.audit_entries(incident_id=inc_id)]


def test_paused_heald_diagnoses_but_does_not_act_until_resumed(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(config(tmp_path), run_probes=False)
    wait_for(lambda: rt.supervisor.get("svc").is_running(), what="svc up")
    pid = rt.supervisor.get("svc").identity().pid
    pause.pause(rt.store, "user:alice", "deploy freeze")
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: "healing.blocked" in events(rt, inc_id), what="the healing to wait for resume")
    inc = rt.store.get_incident(inc_id)
    assert inc.category == "svc_broken" and not inc.state.terminal  # diagnosed, still open
    paused = rt.store.search_audit(incident_id=inc_id, event="gate.paused", limit=1)[0]
    assert "paused by user:alice" in paused.reason and "deploy freeze" in paused.reason
    assert "would have: restart_process {service: svc} (auto)" in paused.reason
    assert rt.store.actions_for(inc_id) == [] and rt.supervisor.get("svc").identity().pid == pid
    assert [e.actor for e in rt.store.search_audit(event="heald.paused", limit=5)] == ["user:alice"]

    pause.resume(rt.store, "user:bob", "freeze over")
    wait_for(lambda: rt.store.actions_for(inc_id), what="the remedy after resume")
    assert rt.supervisor.get("svc").identity().pid != pid  # restarted only after the resume
    rt.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt, inc_id), what="resolution")
    assert done.state == IncidentState.resolved
    assert [e.actor for e in rt.store.search_audit(event="heald.resumed", limit=5)] == ["user:bob"]


def test_a_decision_taken_before_the_pause_is_not_applied_after_it(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(config(tmp_path, risk="medium"), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    pause.pause(rt.store, "user:alice", "something is wrong with heald")
    rt.approve(inc_id, "carol", "approve", "go ahead")  # the decision was taken before the pause
    done = wait_for(lambda: terminal(rt, inc_id), what="hand-over")
    assert done.state == IncidentState.needs_attention
    assert rt.store.actions_for(inc_id) == []
    held = rt.store.search_audit(incident_id=inc_id, event="action.held", limit=1)
    assert held and "decided before the pause" in held[0].reason


def test_shadow_mode_for_an_environment_records_what_heald_would_have_done(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(config(tmp_path, environment="staging", policy={"shadow": {"environments": ["staging"]}}),
                       run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), what="hand-over")
    assert done.state == IncidentState.needs_attention  # the target still fails: a human takes over
    assert rt.store.actions_for(inc_id) == []
    shadowed = rt.store.search_audit(incident_id=inc_id, event="action.shadowed", limit=1)[0]
    assert shadowed.details["remedy"] == "restart_process" and shadowed.details["params"] == {"service": "svc"}
    assert shadowed.details["decision"] == "auto" and shadowed.details["target"]
    assert "would have: restart_process {service: svc} (auto)" in (done.closed_reason or "")
    from heald.explain import incident_report

    assert "**would have**: `restart_process {service: svc} (auto)` (shadow mode" in incident_report(rt.store, inc_id)


def test_shadow_mode_for_a_runbook(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(config(tmp_path, risk="medium", policy={"shadow": {"runbooks": ["svc-broken"]}}),
                       run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: terminal(rt, inc_id), what="hand-over")
    assert done.state == IncidentState.needs_attention and rt.store.actions_for(inc_id) == []
    assert "shadow mode for runbook svc-broken" in (done.closed_reason or "")
    assert "(approval)" in (done.closed_reason or "")  # with the gate's decision


def test_pause_needs_a_reason_and_resume_needs_a_pause(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(config(tmp_path), run_probes=False)
    import pytest

    with pytest.raises(ValueError, match="reason"):
        pause.pause(rt.store, "user:alice", "  ")
    with pytest.raises(ValueError, match="not paused"):
        pause.resume(rt.store, "user:alice")
    assert not pause.state(rt.store).paused


def test_resume_wakes_a_healing_waiting_out_its_backoff(tmp_path: Path, start_runtime) -> None:
    """With a long backoff (60 s), the healing would ask the gate again only a minute after the
    resume; the resume's wake makes it act now."""
    from heald.engine import attention

    cfg = make_config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
                      runbooks=[str(runbook(tmp_path))],
                      healing={"blocked_backoff_initial_seconds": 60, "blocked_backoff_max_seconds": 60})
    rt = start_runtime(cfg, run_probes=False)
    pause.pause(rt.store, "user:alice", "deploy freeze")
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: "healing.blocked" in events(rt, inc_id), what="the healing to wait for resume")
    pause.resume(rt.store, "user:alice")
    assert attention.wake_after_resume(rt.store, rt.send) == 1
    wait_for(lambda: rt.store.actions_for(inc_id), timeout=20, what="the remedy right after resume")
