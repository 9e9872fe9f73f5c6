"""No incident stays open without a live healing workflow (issue 12, item 1): the runtime's
reaper (:meth:`heald.engine.Runtime.reap_stranded_incidents`) starts a missing workflow,
resumes a cancelled one, and ends ``failed`` — audited, with the reason — an incident whose
workflow failed; the target's next signal then opens a new incident. Real runtimes, real DBOS
(SQLite files)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from dbos import DBOS

from heald import correlate
from heald.engine import Runtime, steps, workflow_id
from heald.models import IncidentState, Signal
from heald.store.tables import IncidentRow
from tests.conftest import make_config, wait_for

#: nobody answers the hand-over in these tests: it expires at once, so each healing ends
#: (escalated) and its workflow finishes
HAND_OVER_EXPIRES = {"attention_max_seconds": 0.3, "attention_check_seconds": 0.1}


def sig(**kw: object) -> Signal:
    base = {"source": "test", "service": "shop", "labels": {"alertname": "Down", "service": "shop"}, "summary": "down"}
    return Signal.model_validate({**base, **kw})


def wf_status(incident_id: int) -> str | None:
    status = DBOS.get_workflow_status(workflow_id(incident_id))
    return status.status if status is not None else None


def test_an_incident_whose_workflow_failed_ends_failed_with_the_reason_and_the_next_signal_opens_a_new_one(
        tmp_path: Path, start_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = start_runtime(make_config(tmp_path, healing=HAND_OVER_EXPIRES), manage_services=False, run_probes=False, tail_logs=False)

    def broken(*_: object) -> None:
        raise RuntimeError("a stage crashed on this incident")

    monkeypatch.setattr(steps, "diagnose", broken)  # the failure: a step raises, the workflow ends in ERROR
    first = rt.ingest(sig())
    assert first.opened and first.incident_id is not None
    wait_for(lambda: wf_status(first.incident_id) == "ERROR", what="the workflow to fail")
    monkeypatch.undo()
    assert rt.store.get_incident(first.incident_id).state == IncidentState.observing  # stranded, as on old heald

    fresh = rt.ingest(sig(summary="still down"))  # the dead incident ends before it can join it
    assert fresh.opened and fresh.incident_id not in (first.incident_id, None)
    dead = rt.store.get_incident(first.incident_id)
    assert dead.state == IncidentState.failed
    assert "failed" in (dead.closed_reason or "") and "a stage crashed on this incident" in (dead.closed_reason or "")
    entry = rt.store.search_audit(incident_id=first.incident_id, event="incident.transition", limit=1)[0]
    assert entry.details["to"] == "failed" and entry.details.get("stranded") is True

    assert fresh.incident_id is not None
    wait_for(lambda: rt.store.get_incident(fresh.incident_id).state.terminal, what="the new incident to end")
    assert rt.store.get_incident(fresh.incident_id).state == IncidentState.escalated  # its workflow ran to the end
    assert rt.store.verify_audit().intact


def test_a_cancelled_workflow_is_resumed_by_the_sweep(tmp_path: Path) -> None:
    rt = Runtime(make_config(tmp_path, healing={"group_wait_seconds": 3.0, **HAND_OVER_EXPIRES}), manage_services=False,
                 run_probes=False, tail_logs=False)
    rt.reap_interval_seconds = 0.2
    rt.start()
    try:
        opened = rt.ingest(sig())
        assert opened.incident_id is not None and rt.dispatcher.wait_idle()  # its healing is enqueued
        DBOS.cancel_workflow(workflow_id(opened.incident_id))
        assert wf_status(opened.incident_id) == "CANCELLED"
        wait_for(lambda: wf_status(opened.incident_id) != "CANCELLED", what="the sweep to resume it")
        wait_for(lambda: rt.store.get_incident(opened.incident_id).state.terminal, what="the resumed healing to end")
        assert rt.store.get_incident(opened.incident_id).state == IncidentState.escalated
        wait_for(lambda: wf_status(opened.incident_id) == "SUCCESS", what="its workflow to finish")
        assert rt.reap_stranded_incidents() == {"started": [], "resumed": [], "failed": []}
    finally:
        rt.stop()


def test_the_periodic_sweep_starts_the_workflow_an_open_incident_lacks(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, healing=HAND_OVER_EXPIRES)
    rt = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.reap_interval_seconds = 0.2
    rt.start()
    try:
        with rt.store.tx() as s:  # stored, but its workflow never started (heald died in between)
            orphan = correlate.ingest(s, sig(), cfg)
            s.flush()
            s.get_one(IncidentRow, orphan.incident_id).detected_at -= timedelta(minutes=1)
        assert orphan.incident_id is not None
        wait_for(lambda: rt.store.get_incident(orphan.incident_id).state.terminal, what="the sweep to heal it")
        wait_for(lambda: wf_status(orphan.incident_id) == "SUCCESS", what="its workflow to finish")
    finally:
        rt.stop()


def test_a_batch_that_joins_an_incident_whose_workflow_died_is_stored_once_in_a_new_incident(
        tmp_path: Path, start_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check in the chunk's transaction (no sweep of every open incident before ingesting):
    the chunk that joined the dead incident is rolled back, the incident ends failed, and the
    chunk is stored again — once — joining a new incident."""
    rt = start_runtime(make_config(tmp_path, healing=HAND_OVER_EXPIRES), manage_services=False, run_probes=False, tail_logs=False)

    def broken(*_: object) -> None:
        raise RuntimeError("a stage crashed on this incident")

    monkeypatch.setattr(steps, "diagnose", broken)
    first = rt.ingest(sig())
    assert first.incident_id is not None
    wait_for(lambda: wf_status(first.incident_id) == "ERROR", what="the workflow to fail")
    monkeypatch.undo()
    swept: list[object] = []
    real_sweep = rt._without_live_workflow
    monkeypatch.setattr(rt, "_without_live_workflow", lambda ids: swept.append(ids) or real_sweep(ids))
    batch = rt.ingest_many([sig(summary=f"still down {k}") for k in range(3)])
    assert None not in swept  # only the incidents joined were looked at, not every open one
    assert len({r.incident_id for r in batch}) == 1 and batch[0].opened
    assert batch[0].incident_id not in (first.incident_id, None)
    assert rt.store.get_incident(first.incident_id).state == IncidentState.failed
    assert [s.summary for s in rt.store.signals_for(first.incident_id)] == ["down"]
    assert sorted(s.summary for s in rt.store.signals_for(batch[0].incident_id)) == [f"still down {k}" for k in range(3)]
    assert rt.store.verify_audit().intact


def test_a_workflow_that_ends_in_error_has_its_incident_ended_by_the_periodic_sweep_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: a healing step that still fails (here at once, with the message of a pool that
    stayed exhausted) ends its workflow in ERROR; no new signal arrives, and the runtime's
    periodic sweep alone ends the incident ``failed`` with the error as the reason — no incident
    stays open without a live workflow."""
    rt = Runtime(make_config(tmp_path, healing=HAND_OVER_EXPIRES), manage_services=False, run_probes=False,
                 tail_logs=False)
    rt.reap_interval_seconds = 0.2
    rt.start()
    try:
        def exhausted(*_: object) -> None:
            raise RuntimeError("QueuePool limit of size 20 overflow 40 reached, connection timed out")

        monkeypatch.setattr(steps, "diagnose", exhausted)
        opened = rt.ingest(sig())
        assert opened.incident_id is not None
        wait_for(lambda: rt.store.get_incident(opened.incident_id).state == IncidentState.failed, timeout=30,
                 what="the sweep to end the incident")
        assert wf_status(opened.incident_id) == "ERROR"
        reason = rt.store.get_incident(opened.incident_id).closed_reason or ""
        assert "QueuePool limit" in reason and "cannot be resumed" in reason
        assert len(rt.store.list_incidents()) == 1  # ended by the sweep, not by a new signal
    finally:
        rt.stop()
