"""The store's dashboard queries on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

from datetime import timedelta

from heald import correlate
from heald.models import IncidentState, Outcome, OutcomeResult, Signal, utcnow
from heald.store import Store
from tests.conftest import make_config


def ingest(store: Store, tmp_path, **kw: object) -> int:  # type: ignore[no-untyped-def]
    base = {"source": "test", "service": "shop", "labels": {"alertname": "Down", "service": "shop"}, "summary": "down"}
    with store.tx() as s:
        r = correlate.ingest(s, Signal.model_validate({**base, **kw}), make_config(tmp_path))
    assert r.incident_id is not None
    return r.incident_id


def test_dashboard_queries(store: Store, tmp_path) -> None:
    a = ingest(store, tmp_path)
    b = ingest(store, tmp_path, source="probe", service="pay", labels={"alertname": "Down", "service": "pay"},
               summary="pay down")
    ingest(store, tmp_path, summary="down again")  # joins incident a
    store.transition(a, IncidentState.diagnosing, reason="r")
    store.transition(a, IncidentState.escalated, reason="gave up")
    store.transition(b, IncidentState.diagnosing, reason="r")
    store.transition(b, IncidentState.deciding, reason="r")
    store.transition(b, IncidentState.acting, reason="r")
    store.transition(b, IncidentState.verifying, reason="r")
    store.transition(b, IncidentState.resolved, reason="healed")
    assert store.closed_since(utcnow() - timedelta(hours=1)) == {"escalated": 1, "resolved": 1}
    assert store.closed_since(utcnow() + timedelta(seconds=5)) == {}

    last = store.last_signal_by_source()
    assert sorted(last) == ["probe", "test"]
    assert last["test"][0].summary == "down again" and last["test"][1] == 2
    assert last["probe"][0].incident_id == b and last["probe"][1] == 1

    for inc, attempt, ttr in ((a, 1, None), (a, 0, None), (b, 0, 3.5)):
        store.add_outcome(Outcome(incident_id=inc, category="c", remedy="restart_process", attempt=attempt,
                                  result=OutcomeResult.healed if ttr else OutcomeResult.escalated,
                                  time_to_detect_s=1.0, time_to_recover_s=ttr))
    whole = store.incident_outcomes(limit=10)
    assert [(o.incident_id, o.time_to_recover_s) for o in whole] == [(a, None), (b, 3.5)]  # oldest first
    assert [o.incident_id for o in store.incident_outcomes(limit=1)] == [b]  # the newest

    store.record(actor="user:x_y", event="approval.approve", incident_id=a, reason="ok")
    store.record(actor="user:z", event="approvals_misc", reason="not a dotted child of approval")
    newest = store.search_audit(limit=3)
    assert [e.seq for e in newest] == sorted((e.seq for e in newest), reverse=True)
    assert [e.event for e in store.search_audit(event="approval")] == ["approval.approve"]
    assert [e.event for e in store.search_audit(event="approval.approve")] == ["approval.approve"]
    assert store.search_audit(event="approval_") == []  # '_' is not a wildcard
    assert {e.actor for e in store.search_audit(actor="user:x_y")} == {"user:x_y"}
    transitions = store.search_audit(incident_id=b, event="incident.transition")
    assert len(transitions) == 5 and all(e.incident_id == b for e in transitions)
    older = store.search_audit(before_seq=transitions[0].seq, incident_id=b, event="incident.transition")
    assert [e.seq for e in older] == [e.seq for e in transitions[1:]]
    facets = store.audit_facets()
    assert "user:x_y" in facets["actors"] and "approval.approve" in facets["events"]
    assert facets["events"] == sorted(facets["events"])
