"""The dependency map in correlation: a dependency's incident absorbs its dependents' signals,
and takes over a dependent's incident still gathering signals (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from heald import correlate
from heald.config import HealdConfig
from heald.correlate.dependencies import dependencies_of, dependents_of
from heald.models import IncidentState, Signal, SignalStatus
from heald.store import Store
from tests.conftest import make_config

SERVICES = {"shop": {"depends_on": ["payments"]}, "payments": {"depends_on": ["bank"]}, "bank": {},
            "blog": {}}


def cfg(tmp_path: Path) -> HealdConfig:
    return make_config(tmp_path, services=SERVICES, correlation={"group_by": ["service"]})


def sig(service: str, alertname: str = "Down", status: SignalStatus = SignalStatus.firing) -> Signal:
    return Signal(source="probe", service=service, status=status, summary=f"{service} {alertname}",
                  labels={"alertname": alertname, "service": service})


def ingest(store: Store, config: HealdConfig, s: Signal) -> correlate.IngestResult:
    with store.tx() as session:
        return correlate.ingest(session, s, config)


def test_the_map_is_transitive_and_refuses_cycles(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert dependencies_of(c, "shop") == ["payments", "bank"]
    assert sorted(dependents_of(c, "bank")) == ["payments", "shop"]
    assert dependents_of(c, "blog") == [] and dependencies_of(c, "nope") == []
    with pytest.raises(ValidationError, match="dependency cycle shop → payments → bank → shop"):
        make_config(tmp_path, services={**SERVICES, "bank": {"depends_on": ["shop"]}})


def test_a_dependents_signal_joins_the_dependencys_open_incident(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    payments = ingest(store, c, sig("payments"))
    shop = ingest(store, c, sig("shop", "HighErrorRate"))
    assert payments.opened and not shop.opened and shop.incident_id == payments.incident_id
    entries = store.audit_entries(incident_id=payments.incident_id)
    joined = next(e for e in entries if e.event == "signal.firing")
    assert "shop depends on payments" in joined.reason and joined.details["inhibited_by_dependency"] == "payments"
    # an unrelated service still gets its own incident
    assert ingest(store, c, sig("blog")).opened


def test_a_dependencys_signal_takes_over_an_observing_dependent_incident(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    shop = ingest(store, c, sig("shop", "HighErrorRate"))
    bank = ingest(store, c, sig("bank"))  # a transitive dependency fails too
    assert bank.incident_id == shop.incident_id and not bank.opened
    inc = store.get_incident(shop.incident_id)
    assert inc.service == "bank" and inc.group_key == "service=bank" and inc.labels["service"] == "bank"
    assert "dependent shop" in inc.title
    assert any(e.event == "incident.retargeted" and e.details == {"from": "shop", "to": "bank", "group_key": "service=bank"}
               for e in store.audit_entries(incident_id=inc.id))
    # later signals of either side keep joining the one incident
    assert ingest(store, c, sig("payments")).incident_id == inc.id
    assert ingest(store, c, sig("bank", "Slow")).incident_id == inc.id
    assert len(store.list_incidents()) == 1


def test_no_takeover_once_the_dependent_incident_is_being_healed(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    shop = ingest(store, c, sig("shop", "HighErrorRate"))
    store.transition(shop.incident_id, IncidentState.diagnosing, reason="test")
    payments = ingest(store, c, sig("payments"))
    assert payments.opened and payments.incident_id != shop.incident_id
    assert store.get_incident(shop.incident_id).service == "shop"


def test_a_resolved_signal_after_the_incident_closed_is_kept_with_it(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    fired = ingest(store, c, sig("blog"))
    store.transition(fired.incident_id, IncidentState.escalated, reason="test")
    resolved = ingest(store, c, sig("blog", status=SignalStatus.resolved))
    assert resolved.incident_id == fired.incident_id and not resolved.opened
    inc = store.get_incident(fired.incident_id)
    assert inc.state == IncidentState.escalated  # recorded, never reopened
    assert [s.status for s in store.signals_for(inc.id)] == [SignalStatus.firing, SignalStatus.resolved]
    # a resolved signal nobody saw fire joins nothing
    assert ingest(store, c, sig("bank", status=SignalStatus.resolved)).incident_id is None


def test_a_dependents_late_signal_is_kept_with_the_closed_dependency_incident(tmp_path: Path, store: Store) -> None:
    """The shop's error ratio crosses its threshold only after payments' incident was healed
    (and verified with the shop's own probes): the signal is recorded there, not a new incident."""
    c = cfg(tmp_path)
    payments = ingest(store, c, sig("payments"))
    began = store.get_incident(payments.incident_id).started_at
    store.transition(payments.incident_id, IncidentState.resolved, reason="test")
    late = sig("shop", "HighErrorRate").model_copy(update={"starts_at": began})
    r = ingest(store, c, late)
    assert r.incident_id == payments.incident_id and not r.opened
    assert store.get_incident(payments.incident_id).state == IncidentState.resolved
    # a failure that began after payments' incident closed is the shop's own
    after = ingest(store, c, sig("shop", "Other"))
    assert after.opened
