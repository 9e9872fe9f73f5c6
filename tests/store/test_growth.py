"""Issue 19, growth: the store's reads stay bounded as history grows — pages of signals and
timeline entries, silences, time to recover over every heal in the database, pending approvals
in a fixed number of queries, and incremental audit verification that still sees tampering
with what is new."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from heald import correlate
from heald.correlate.silences import SilenceError, create_silence, expire_silence, list_silences
from heald.models import Decision, DecisionKind, Outcome, OutcomeResult, Signal, SignalStatus, utcnow
from heald.store import Store
from heald.store.audit import ChainWatch
from heald.store.db import normalize_url
from tests.conftest import make_config


@pytest.fixture
def fire(store: Store, tmp_path: Path) -> Callable[..., int]:
    """``fire(n, service)``: ingest ``n`` firing signals of one alert about ``service`` (one
    incident); returns the incident's id."""
    config = make_config(tmp_path)

    def ingest(n: int, service: str = "api") -> int:
        incident_id = 0
        for i in range(n):
            with store.tx() as s:
                res = correlate.ingest(s, Signal(source="test", service=service, summary=f"s{i}",
                                                 labels={"alertname": "Down", "service": service}), config)
            incident_id = res.incident_id or incident_id
        return incident_id
    return ingest


def test_signal_pages_walk_every_signal_once_and_the_detail_is_bounded(store: Store, fire: Callable[..., int]) -> None:
    inc = fire(7)
    seen, after, pages = [], 0, 0
    while True:
        page, after_next = store.signals_page(inc, after_id=after, limit=3)
        seen += [s.id for s in page]
        pages += 1
        if after_next is None:
            break
        after = after_next
    assert seen == [s.id for s in store.signals_for(inc)] and len(seen) == 7 and pages == 3
    detail = store.incident_detail(inc, signals_limit=2, timeline_limit=3)
    assert [s["id"] for s in detail["signals"]] == seen[:2]
    assert detail["signals_page"] == {"total": 7, "limit": 2, "next_after": seen[1]}
    assert len(detail["timeline"]) == 3 and detail["timeline"][0]["event"] == "incident.opened"
    rest = store.audit_entries(incident_id=inc, after_seq=detail["timeline_page"]["next_after"])
    assert detail["timeline_page"]["total"] == 3 + len(rest)
    whole = store.incident_detail(inc)
    assert len(whole["signals"]) == 7 and whole["signals_page"]["next_after"] is None


def test_signal_statuses_and_kinds_read_only_what_they_need(store: Store, fire: Callable[..., int]) -> None:
    inc = fire(3)
    rows = store.signal_statuses(inc)
    assert [r.id for r in rows] == [s.id for s in store.signals_for(inc)]
    assert store.signal_statuses(inc, after_id=rows[1].id) == rows[2:]
    assert store.signal_kinds(inc) == [("test", "api", SignalStatus.firing)]


def test_recovery_summary_is_the_median_and_histogram_of_every_heal(store: Store, fire: Callable[..., int]) -> None:
    inc = fire(1)
    times = [3.0, 1.0, 30.0, 7.0, 2.0, 600.0]
    for t in times:
        store.add_outcome(Outcome(incident_id=inc, category="c", remedy="r", result=OutcomeResult.healed,
                                  time_to_recover_s=t))
    store.add_outcome(Outcome(incident_id=inc, category="c", remedy="r", result=OutcomeResult.not_healed,
                              time_to_recover_s=1.0))
    summary = store.recovery_summary((2, 10, 1000))
    assert summary["count"] == 6 and summary["sum"] == sum(times)
    assert summary["median"] == statistics.median(times)
    assert summary["buckets"] == [(2.0, 2), (10.0, 4), (1000.0, 6)]
    store.add_outcome(Outcome(incident_id=inc, category="c", remedy="r", result=OutcomeResult.healed,
                              time_to_recover_s=5.0))
    assert store.recovery_summary()["median"] == statistics.median([*times, 5.0])
    assert store.recovery_times(limit=2) == [5.0, 600.0]  # newest first, bounded


def test_silences_are_listed_by_page_and_state_in_the_database(store: Store) -> None:
    now = utcnow()
    ids = [create_silence(store, [f'service="s{i}"'], now + timedelta(hours=1), created_by="t", comment="c")["id"]
           for i in range(5)]
    pending = create_silence(store, ['service="later"'], now + timedelta(hours=3), starts_at=now + timedelta(hours=2),
                             created_by="t", comment="c")["id"]
    expire_silence(store, ids[0], "t")
    first = list_silences(store, limit=2)
    assert [s["id"] for s in first] == [pending, ids[4]]
    assert [s["id"] for s in list_silences(store, limit=2, before_id=first[-1]["id"])] == [ids[3], ids[2]]
    assert [s["id"] for s in list_silences(store, "expired")] == [ids[0]]
    assert [s["id"] for s in list_silences(store, "pending")] == [pending]
    assert [s["id"] for s in list_silences(store, "active")] == ids[4:0:-1]
    assert ids[0] not in [s["id"] for s in list_silences(store, unexpired=True)]
    with pytest.raises(SilenceError, match="limit"):
        list_silences(store, limit=0)


def test_pending_approvals_match_the_per_incident_reads(store: Store, fire: Callable[..., int]) -> None:
    from heald.models import IncidentState

    incs = [fire(1, service=f"svc{i}") for i in range(3)]
    for inc in incs[:2]:
        store.add_decision(inc, Decision(kind=DecisionKind.approval, reason="risky", required_approvals=2))
        last = store.add_decision(inc, Decision(kind=DecisionKind.approval, reason="again", required_approvals=2))
        store.add_approval(inc, last, "alice", "approve")
        for state in (IncidentState.diagnosing, IncidentState.deciding, IncidentState.awaiting_approval):
            store.transition(inc, state, reason="test")
    pending = store.pending_approvals()
    assert [p["incident"].id for p in pending] == incs[1::-1]
    for p in pending:
        assert p["decision"] == store.decisions_for(p["incident"].id)[-1]
        assert p["votes"] == store.approvals_for(p["incident"].id, p["decision"]["id"])


def tamper(store: Store, seq: int) -> None:
    """Change entry ``seq``'s reason behind heald's back (the append-only triggers dropped first)."""
    engine = sa.create_engine(normalize_url(store.url))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update")
        else:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        conn.execute(sa.text("UPDATE audit_log SET reason = 'forged' WHERE seq = :s"), {"s": seq})
    engine.dispose()


def check(store: Store, watch: ChainWatch, **kw: bool):  # type: ignore[no-untyped-def]
    with store.read() as s:
        return watch.check(s, **kw)


def test_the_chain_watch_walks_only_new_entries_and_sees_a_forged_new_one(store: Store) -> None:
    for i in range(20):
        store.record(actor="t", event="t.e", reason=f"e{i}")
    watch = ChainWatch(full_every_s=3600)
    first = check(store, watch)
    assert first.intact and first.full and first.report.entries == 20 and first.verified_to == 20
    for i in range(3):
        store.record(actor="t", event="t.e", reason=f"new{i}")
    second = check(store, watch)
    assert second.intact and not second.full and second.since_seq == 20
    assert second.report.entries == 4  # entry 20 (its hash must be unchanged) and the 3 new ones
    assert second.verified_to == 23
    for i in range(3):
        store.record(actor="t", event="t.e", reason=f"newer{i}")
    tamper(store, 25)  # an entry written since the last check
    broken = check(store, watch)
    assert not broken.intact and broken.report.first_bad_seq == 25 and broken.verified_to == 0
    assert not check(store, watch).intact  # a broken chain is never remembered as good


def test_the_chain_watch_claims_only_what_it_walked_and_a_full_walk_sees_older_forgeries(store: Store) -> None:
    for i in range(10):
        store.record(actor="t", event="t.e", reason=f"e{i}")
    t = [0.0]
    watch = ChainWatch(full_every_s=60, clock=lambda: t[0])
    assert check(store, watch).full
    tamper(store, 3)  # older than the newest entry verified: an incremental check does not read it
    quick = check(store, watch)
    assert quick.intact and not quick.full and quick.report.entries == 1
    assert not store.verify_audit().intact  # what `heald audit verify` says meanwhile
    t[0] = 61.0  # the periodic whole walk
    due = check(store, watch)
    assert due.full and not due.intact and due.report.first_bad_seq == 3
    assert not check(store, ChainWatch(), full=True).intact


def test_metrics_histograms_are_counted_by_the_database(store: Store, fire: Callable[..., int]) -> None:
    """/metrics read every incident and every heal into Python (seconds at 100k); the database
    now counts the buckets, on SQLite and PostgreSQL alike."""
    from heald.api.metrics import StoreCollector

    inc = fire(1)
    for t in (0.4, 4.0, 4000.0):
        store.add_outcome(Outcome(incident_id=inc, category="c", remedy="r", result=OutcomeResult.healed,
                                  time_to_recover_s=t))
    families = {m.name: m for m in StoreCollector(store).collect()}
    ttr = {s.labels.get("le"): s.value for s in families["heald_time_to_recover_seconds"].samples
           if s.name.endswith("_bucket")}
    assert ttr["0.5"] == 1 and ttr["5.0"] == 2 and ttr["3600.0"] == 2 and ttr["+Inf"] == 3
    ttd = list(families["heald_time_to_detect_seconds"].samples)
    assert {s.name: s.value for s in ttd if not s.name.endswith("_bucket")}["heald_time_to_detect_seconds_count"] == 1
    assert all(s.value == 1 for s in ttd if s.name.endswith("_bucket"))  # opened as the signal came: 0 s


def test_metrics_tallies_read_only_the_rows_added_since_their_mark(store: Store, fire: Callable[..., int]) -> None:
    """Signals by source and escalations (issue 19: /metrics counted the whole history at every
    scrape): a scrape counts the rows after a mark, and the mark settles SETTLE_SECONDS after a
    scrape saw them; a row committed late below a scrape's largest id, within that time, counts."""
    from heald.api.metrics import SETTLE_SECONDS, StoreCollector
    from heald.models import IncidentState
    from heald.store.tables import SignalRow

    def figures(c: StoreCollector) -> tuple[dict[str, float], float]:
        families = {m.name: m for m in c.collect()}
        signals = {s.labels["source"]: s.value for s in families["heald_signals_received"].samples}
        return signals, families["heald_escalations"].samples[0].value

    inc = fire(4)
    with store.tx() as s:  # the third signal's transaction "commits" after the first scrape
        third = s.get(SignalRow, s.scalars(sa.select(SignalRow.id).order_by(SignalRow.id)).all()[2])
        assert third is not None
        late = {c.key: getattr(third, c.key) for c in SignalRow.__mapper__.column_attrs}
        s.delete(third)
    now = [0.0]
    collector = StoreCollector(store, clock=lambda: now[0])
    assert figures(collector) == ({"test": 3}, 0)
    now[0] = SETTLE_SECONDS / 2
    with store.tx() as s:
        s.add(SignalRow(**late))
    fire(2, service="db")
    store.transition(inc, IncidentState.escalated, reason="test: no runbook")
    assert figures(collector) == ({"test": 6}, 1)
    now[0] = SETTLE_SECONDS * 2  # the first scrape's rows settle; the second's are still read
    assert figures(collector) == ({"test": 6}, 1)
    now[0] = SETTLE_SECONDS * 4  # all settle
    assert figures(collector) == ({"test": 6}, 1)
    with store.tx() as s:  # settled rows are not read again: gone (all but the newest), they still count
        s.execute(sa.delete(SignalRow).where(SignalRow.id < sa.select(sa.func.max(SignalRow.id)).scalar_subquery()))
    fire(1, service="web")
    assert figures(collector) == ({"test": 7}, 1)
    assert figures(StoreCollector(store)) == ({"test": 2}, 1)  # a new process counts what the store holds

