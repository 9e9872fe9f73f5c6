"""Correlation's parts: how a signal joined (JoinedBy), found by find_incident, and what ingest
stores and audits for each way (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from heald.config import HealdConfig
from heald.correlate import JoinedBy, find_incident, fingerprint, group_key
from heald.correlate.silences import create_silence
from heald.models import IncidentState, Signal, SignalStatus, utcnow
from heald.store import Store
from tests.conftest import make_config
from tests.correlate.test_dependencies import cfg, ingest, sig


def events(store: Store, incident_id: int | None = None) -> list[str]:
    return [e.event for e in store.audit_entries(incident_id=incident_id)]


def test_each_way_a_signal_joins_is_named(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    first = ingest(store, c, sig("blog"))
    assert first.opened and first.joined == JoinedBy.new_incident
    again = ingest(store, c, sig("blog"))
    assert again.joined == JoinedBy.same_fingerprint and again.incident_id == first.incident_id
    other_alert = ingest(store, c, sig("blog", "Slow"))  # another fingerprint, the same grouping key (service)
    assert other_alert.joined == JoinedBy.same_group and other_alert.incident_id == first.incident_id
    assert not again.opened and not other_alert.opened

    payments = ingest(store, c, sig("payments"))
    shop = ingest(store, c, sig("shop", "HighErrorRate"))
    assert shop.joined == JoinedBy.dependency and shop.incident_id == payments.incident_id

    nobody = ingest(store, c, sig("bank", "Never", status=SignalStatus.resolved))
    assert nobody.joined == JoinedBy.unmatched and nobody.incident_id is None and not nobody.opened
    assert nobody.signal_id > shop.signal_id  # stored all the same

    store.transition(first.incident_id, IncidentState.escalated, reason="test")
    late = ingest(store, c, sig("blog", status=SignalStatus.resolved))
    assert late.joined == JoinedBy.resolves_closed and late.incident_id == first.incident_id
    [opened] = [e for e in store.audit_entries(incident_id=first.incident_id) if e.event == "incident.opened"]
    assert opened.details["group_key"] == group_key(sig("blog"), c.correlation.group_by)
    resolved = [e for e in store.audit_entries(incident_id=first.incident_id) if e.event == "signal.resolved"]
    assert len(resolved) == 1 and "(the incident was already escalated)" in resolved[0].reason


def test_a_dependency_takes_over_and_explains(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    shop = ingest(store, c, sig("shop", "HighErrorRate"))
    bank = ingest(store, c, sig("bank"))
    assert bank.joined == JoinedBy.took_over_dependent and bank.incident_id == shop.incident_id and not bank.opened
    inc = store.get_incident(shop.incident_id)
    assert inc.service == "bank" and "(and its dependent shop)" in inc.title
    retargeted = [e for e in store.audit_entries(incident_id=inc.id) if e.event == "incident.retargeted"]
    assert [(e.details["from"], e.details["to"]) for e in retargeted] == [("shop", "bank")]

    store.transition(inc.id, IncidentState.diagnosing, reason="test")
    store.transition(inc.id, IncidentState.escalated, reason="test")
    began = store.get_incident(inc.id).started_at
    late = ingest(store, c, sig("payments", "Slow").model_copy(update={"starts_at": began}))
    assert late.joined == JoinedBy.explained_by_dependency and late.incident_id == inc.id
    assert store.get_incident(inc.id).state == IncidentState.escalated  # recorded, not reopened
    [explained] = [e for e in store.audit_entries(incident_id=inc.id)
                   if e.event == "signal.firing" and e.details.get("explained_by_dependency")]
    assert explained.details["explained_by_dependency"] == "bank" and "recorded, not reopened" in explained.reason


def test_silenced_and_inhibited_signals_are_named_and_join_nothing(tmp_path: Path, store: Store) -> None:
    c: HealdConfig = make_config(tmp_path, correlation={"inhibit_rules": [
        {"source_matchers": ['alertname="NodeDown"'], "target_matchers": ['alertname="Slow"'], "equal": ["node"]}]})
    source = ingest(store, c, Signal(source="am", service="node-a", labels={"alertname": "NodeDown", "node": "a"}))
    muted = ingest(store, c, Signal(source="am", service="app", labels={"alertname": "Slow", "node": "a"}))
    assert muted.joined == JoinedBy.inhibited and muted.incident_id is None
    assert muted.suppressed_by.startswith(f"inhibited by signal {source.signal_id}")
    create_silence(store, ['service="quiet"'], utcnow() + timedelta(hours=1), created_by="user:ops", comment="t")
    hushed = ingest(store, c, Signal(source="am", service="quiet", labels={"alertname": "X"}))
    assert hushed.joined == JoinedBy.silenced and hushed.incident_id is None
    assert {"signal.silenced", "signal.inhibited"} <= set(events(store))
    assert len(store.list_incidents()) == 1


def test_an_earlier_start_moves_the_open_incident_back_but_not_a_closed_one(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    first = ingest(store, c, sig("blog"))
    started = store.get_incident(first.incident_id).started_at
    earlier = sig("blog").model_copy(update={"starts_at": started - timedelta(minutes=5)})
    ingest(store, c, earlier)
    assert store.get_incident(first.incident_id).started_at == started - timedelta(minutes=5)
    store.transition(first.incident_id, IncidentState.escalated, reason="test")
    resolved = sig("blog", status=SignalStatus.resolved).model_copy(
        update={"starts_at": started - timedelta(minutes=30)})
    assert ingest(store, c, resolved).joined == JoinedBy.resolves_closed
    assert store.get_incident(first.incident_id).started_at == started - timedelta(minutes=5)


def test_find_incident_only_reads(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    ingest(store, c, sig("blog"))
    probe = sig("blog", "Other")
    before = events(store)
    with store.tx() as session:
        join = find_incident(session, probe, fingerprint(probe), group_key(probe, c.correlation.group_by), c, utcnow())
    assert join.how == JoinedBy.same_group and join.incident is not None and join.incident.service == "blog"
    assert events(store) == before and len(store.signals_for(join.incident.id)) == 1
    fresh = sig("bank")
    with store.tx() as session:
        join = find_incident(session, fresh, fingerprint(fresh), group_key(fresh, c.correlation.group_by), c,
                             utcnow())
    assert join.how == JoinedBy.new_incident and join.incident is None
    assert len(store.list_incidents()) == 1
