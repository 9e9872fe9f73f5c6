"""The store on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from heald import correlate
from heald.models import Action, ActionStatus, Decision, DecisionKind, IncidentState, Signal, SignalStatus, utcnow
from heald.store import InvalidTransition, NotFound, Store
from tests.conftest import make_config


def sig(**kw: object) -> Signal:
    base = {"source": "test", "service": "shop", "labels": {"alertname": "Down", "service": "shop"}, "summary": "down"}
    return Signal.model_validate({**base, **kw})


def ingest(store: Store, signal: Signal, tmp_path):  # type: ignore[no-untyped-def]
    with store.tx() as s:
        return correlate.ingest(s, signal, make_config(tmp_path))


def test_migrate_is_idempotent_and_sqlite_uses_wal(store: Store) -> None:
    store.migrate()
    with store.engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        assert {"incidents", "signals", "actions", "audit_log", "audit_head", "alembic_version"} <= tables
        if store.engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_same_fingerprint_joins_the_open_incident(store: Store, tmp_path) -> None:
    first = ingest(store, sig(), tmp_path)
    second = ingest(store, sig(summary="still down"), tmp_path)
    assert first.opened and not second.opened
    assert second.incident_id == first.incident_id
    assert len(store.signals_for(first.incident_id)) == 2
    assert len(store.list_incidents()) == 1


def test_other_service_opens_its_own_incident(store: Store, tmp_path) -> None:
    a = ingest(store, sig(), tmp_path)
    b = ingest(store, sig(service="payments", labels={"alertname": "Down", "service": "payments"}), tmp_path)
    assert a.incident_id != b.incident_id and b.opened


def test_resolved_signal_never_opens_an_incident(store: Store, tmp_path) -> None:
    r = ingest(store, sig(status=SignalStatus.resolved), tmp_path)
    assert r.incident_id is None and not r.opened
    assert store.list_incidents() == []


def test_closed_incident_is_not_joined(store: Store, tmp_path) -> None:
    first = ingest(store, sig(), tmp_path)
    store.transition(first.incident_id, IncidentState.escalated, reason="test")
    again = ingest(store, sig(), tmp_path)
    assert again.opened and again.incident_id != first.incident_id


def test_earlier_signal_moves_incident_start(store: Store, tmp_path) -> None:
    now = utcnow()
    first = ingest(store, sig(starts_at=now), tmp_path)
    ingest(store, sig(starts_at=now - timedelta(seconds=30)), tmp_path)
    inc = store.get_incident(first.incident_id)
    assert inc.started_at == now - timedelta(seconds=30)
    assert inc.time_to_detect_s >= 30


def test_concurrent_signals_open_one_incident(store: Store, tmp_path) -> None:
    results = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(ingest(store, sig(), tmp_path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.opened for r in results) == 1
    assert len({r.incident_id for r in results}) == 1


def test_state_machine_refuses_invalid_transitions(store: Store, tmp_path) -> None:
    inc_id = ingest(store, sig(), tmp_path).incident_id
    with pytest.raises(InvalidTransition):
        store.transition(inc_id, IncidentState.verifying, reason="skip ahead")
    store.transition(inc_id, IncidentState.diagnosing, reason="go")
    inc = store.transition(inc_id, IncidentState.escalated, reason="give up")
    assert inc.closed_at is not None and inc.closed_reason == "give up"
    with pytest.raises(InvalidTransition):
        store.transition(inc_id, IncidentState.diagnosing, reason="reopen")
    with pytest.raises(NotFound):
        store.transition(9999, IncidentState.diagnosing, reason="none")


def test_action_idempotency_key_returns_the_stored_action(store: Store, tmp_path) -> None:
    inc_id = ingest(store, sig(), tmp_path).incident_id
    a = Action(incident_id=inc_id, attempt=1, remedy="restart_process", params={"service": "shop"},
               idempotency_key="k1", snapshot={"instance": {"pid": 1, "start_ticks": 2}})
    first, new1 = store.begin_action(a)
    again, new2 = store.begin_action(a)
    assert new1 and not new2 and first.id == again.id
    assert again.snapshot == {"instance": {"pid": 1, "start_ticks": 2}}
    store.finish_action(first.id, ActionStatus.succeeded, "done")
    assert [x.status for x in store.actions_for(inc_id)] == [ActionStatus.succeeded]


def test_an_approver_counts_once(store: Store, tmp_path) -> None:
    inc_id = ingest(store, sig(), tmp_path).incident_id
    did = store.add_decision(inc_id, Decision(kind=DecisionKind.approval, reason="r", required_approvals=2))
    assert store.add_approval(inc_id, did, "alice", "approve")
    assert not store.add_approval(inc_id, did, "alice", "approve")
    assert store.add_approval(inc_id, did, "bob", "approve")
    assert [v["approver"] for v in store.approvals_for(inc_id, did)] == ["alice", "bob"]


def test_incident_detail_has_the_timeline(store: Store, tmp_path) -> None:
    inc_id = ingest(store, sig(), tmp_path).incident_id
    store.transition(inc_id, IncidentState.diagnosing, reason="look")
    detail = store.incident_detail(inc_id)
    events = [e["event"] for e in detail["timeline"]]
    assert events == ["incident.opened", "incident.transition"]
    assert detail["incident"]["state"] == "diagnosing"
    assert detail["signals"][0]["summary"] == "down"


def test_concurrent_first_tokens_of_one_name_bind_one_root(store: Store) -> None:
    """Eight makers race to create the first token of one identity, each as their own human:
    one root wins, the others are refused (an identity never counts as two humans)."""
    from heald.models import Role
    from heald.store import IdentityConflict

    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            store.add_token(name="shared", role=Role.approver, token_hash=f"{i:064d}", prefix="heald_x",
                            created_by=f"user:maker{i}", sponsor=f"maker{i}")
            outcomes.append("created")
        except IdentityConflict:
            outcomes.append("refused")
        except sa.exc.OperationalError:  # SQLite: "database is locked" for a writer that lost the race
            outcomes.append("busy")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "created" in outcomes and len(outcomes) == 8
    roots = {t.root_identity for t in store.list_tokens() if t.name == "shared"}
    assert len(roots) == 1 and outcomes.count("created") == 1
