"""Cheap ingest (issue 19): a chunk's signals are correlated with their fingerprints' incidents
read at once, stored in one INSERT and audited together; the open incident of a fingerprint is
found without reading its history; active silences come from a per-process cache. Real SQLite
and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from heald import correlate
from heald.config import HealdConfig
from heald.correlate import JoinedBy, silences
from heald.correlate.silences import active_silence, create_silence, expire_silence
from heald.models import IncidentState, Signal, SignalStatus, utcnow
from heald.store import Store
from heald.store.tables import IncidentRow, SignalRow, SilenceRow
from tests.conftest import make_config


def cfg(tmp_path: Path) -> HealdConfig:
    return make_config(tmp_path, correlation={"group_by": ["service", "alertname"]})


def sig(service: str, alertname: str = "Down", **kw: Any) -> Signal:
    return Signal.model_validate({"source": "alertmanager", "service": service, "summary": f"{service} {alertname}",
                                  "labels": {"alertname": alertname, "service": service}, **kw})


def ingest_all(store: Store, config: HealdConfig, signals: list[Signal]) -> list[correlate.IngestResult]:
    return store.transact(lambda s: correlate.ingest_all(s, signals, config))


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements ``store``'s engine runs meanwhile."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engines = {store.engine, store.read_engine}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", record)


def test_a_batch_is_correlated_as_one_by_one_and_audited_as_a_dense_chain(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    batch = [sig(f"svc{k % 5}") for k in range(20)] + [sig("svc0", status=SignalStatus.resolved)]
    results = ingest_all(store, c, batch)
    opened = [r for r in results if r.opened]
    assert len(opened) == 5  # one incident per fingerprint, the first signal of each opened it
    by_service = {s.service: r.incident_id for s, r in zip(batch, results, strict=True) if r.opened}
    for s, r in zip(batch, results, strict=True):
        assert r.incident_id == by_service[s.service]  # every later one joined its fingerprint's incident
        assert r.opened or r.joined == JoinedBy.same_fingerprint
    ids = [r.signal_id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # stored once each, in order
    with store.read() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SignalRow)) == len(batch)
    entries = store.audit_entries()
    assert [e.seq for e in entries] == list(range(1, len(batch) + 1))  # one entry per signal, dense
    assert [e.details["signal_id"] for e in entries] == ids
    assert store.verify_audit().intact


def test_duplicates_of_open_incidents_cost_no_query_per_signal(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    ingest_all(store, c, [sig(f"svc{k}") for k in range(50)])
    correlate.silences.invalidate_silences()
    ingest_all(store, c, [sig("warm")])  # the silence cache is read
    with statements(store) as seen:
        results = ingest_all(store, c, [sig(f"svc{k}") for k in range(50)])
    assert all(r.joined == JoinedBy.same_fingerprint for r in results)
    # a few reads per chunk (the fingerprints' and keys' newest incidents, those incidents, the
    # audit head), not one or more per signal (SQLAlchemy sends the rows of the one multi-row
    # INSERT to SQLite one by one: it cannot match RETURNING rows to parameters otherwise)
    reads = [q for q in seen if q.lstrip().upper().startswith("SELECT")]
    assert len(reads) <= 8, reads  # PostgreSQL: and the writer lock, the named locks (one statement)
    assert not [q for q in seen if "silences" in q]


def test_the_open_incident_is_found_when_a_newer_incident_of_the_fingerprint_has_closed(
        tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    first = ingest_all(store, c, [sig("shop")])[0]
    assert first.incident_id is not None
    # a newer incident holding the same fingerprint, closed (a signal recorded with it, as a
    # resolved signal is with the latest incident of its fingerprint)
    with store.tx() as s:
        newer = IncidentRow(title="old", service="shop", state="resolved", severity="warning", fingerprint="x",
                            group_key="other", labels={}, environment="production", attempts=0, started_at=utcnow(),
                            detected_at=utcnow(), updated_at=utcnow(), closed_at=utcnow())
        s.add(newer)
        s.flush()
        fp = s.scalar(sa.select(SignalRow.fingerprint).where(SignalRow.id == first.signal_id))
        s.add(SignalRow(source="t", kind="alert", service="shop", status="resolved", severity="warning", summary="",
                        labels={}, annotations={}, fingerprint=fp, starts_at=utcnow(), received_at=utcnow(),
                        incident_id=newer.id))
    again = ingest_all(store, c, [sig("shop")])[0]
    assert again.joined == JoinedBy.same_fingerprint and again.incident_id == first.incident_id


def test_a_fingerprint_whose_incident_closed_opens_a_new_one_that_the_rest_of_the_batch_joins(
        tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    first = ingest_all(store, c, [sig("shop")])[0]
    assert first.incident_id is not None
    store.transition(first.incident_id, IncidentState.escalated, reason="test")
    again = ingest_all(store, c, [sig("shop"), sig("shop"), sig("shop", status=SignalStatus.resolved)])
    assert again[0].opened and again[0].incident_id != first.incident_id
    assert [r.incident_id for r in again[1:]] == [again[0].incident_id] * 2
    assert [r.joined for r in again[1:]] == [JoinedBy.same_fingerprint] * 2


def test_a_silence_applies_to_the_next_signal_and_its_expiry_too(tmp_path: Path, store: Store) -> None:
    c = cfg(tmp_path)
    silences.invalidate_silences()
    assert ingest_all(store, c, [sig("blog")])[0].opened  # the (empty) list of silences is cached now
    made = create_silence(store, ['service="shop"'], utcnow() + timedelta(hours=1), created_by="op", comment="maint")
    hit = ingest_all(store, c, [sig("shop")])[0]
    assert hit.joined == JoinedBy.silenced and hit.incident_id is None
    expire_silence(store, made["id"], "op")
    assert ingest_all(store, c, [sig("shop")])[0].opened


def test_a_silence_another_process_creates_applies_within_the_cache_time(tmp_path: Path, store: Store,
                                                                           monkeypatch: Any) -> None:
    clock = [1000.0]
    monkeypatch.setattr(silences.time, "monotonic", lambda: clock[0])
    silences.invalidate_silences()
    assert active_silence_now(store, {"service": "shop"}) is None  # read (none) and cached at 1000.0
    now = utcnow()
    with store.tx() as s:  # written behind this process's back (the CLI, another heald)
        s.add(SilenceRow(matchers=['service="shop"'], starts_at=now, ends_at=now + timedelta(hours=1), comment="cli",
                         created_by="op", created_at=now))
    clock[0] += silences.SILENCE_CACHE_SECONDS / 2
    assert active_silence_now(store, {"service": "shop"}) is None  # not seen yet: the cache is young
    clock[0] += silences.SILENCE_CACHE_SECONDS
    assert active_silence_now(store, {"service": "shop"}) is not None


def test_a_pending_silence_starts_and_ends_by_its_window_without_a_new_read(tmp_path: Path, store: Store) -> None:
    silences.invalidate_silences()
    start = utcnow() + timedelta(minutes=10)
    create_silence(store, ['service="shop"'], start + timedelta(minutes=5), created_by="op", comment="window",
                   starts_at=start)
    with store.read() as s:
        assert active_silence(s, {"service": "shop"}, utcnow()) is None  # read and cached: pending
    with statements(store) as seen, store.read() as s:
        assert active_silence(s, {"service": "shop"}, start + timedelta(seconds=1)) is not None
        assert active_silence(s, {"service": "shop"}, start + timedelta(minutes=6)) is None
    assert not [q for q in seen if "silences" in q]


def active_silence_now(store: Store, labels: dict[str, str]) -> silences.Silence | None:
    with store.read() as s:
        return active_silence(s, labels)


def test_a_chunk_of_new_alerts_reads_the_open_incidents_once(tmp_path: Path, store: Store) -> None:
    """A chunk whose signals open incidents looks for each one's open incident by grouping key
    and by target with two reads for the whole chunk, not two per signal; incidents opened
    earlier in the chunk are found by the signals after them (same key, same target)."""
    c = cfg(tmp_path)
    with statements(store) as seen:
        results = ingest_all(store, c, [*[sig(f"svc{k}") for k in range(40)], sig("svc3", alertname="Slow")])
    assert sum(r.opened for r in results) == 40
    # the last one is about svc3 (another alert name: another fingerprint and grouping key): it
    # joins the incident opened earlier in the same chunk, by target
    assert results[-1].joined == JoinedBy.same_target and results[-1].incident_id == results[3].incident_id
    reads = [q for q in seen if q.lstrip().upper().startswith("SELECT") and "incidents" in q]
    assert len(reads) <= 6, reads
