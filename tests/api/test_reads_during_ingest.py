"""Reads never wait for ingestion (issue 12, item 2), over real HTTP on a real SQLite file:
``/healthz``, the API and the dashboard answer while a writer holds the write lock; a big
Alertmanager message is stored in bounded chunks, another writer gets in between them, and
every alert is stored exactly once; a transient database error in a later chunk keeps what was
stored and answers 503 with Retry-After, and sending again completes the message (a delivery
with an id stores only the rest). Timings are measured in ``bench/sqlite_reads.py``, not here."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from heald.auth import COOKIE
from heald.engine import Runtime
from heald.engine.runtime import IngestIncomplete
from heald.models import Signal
from heald.store import db
from heald.store.tables import AuditRow, SignalRow
from tests.conftest import wait_for
from tests.store.test_read_path import writer_holding_the_lock

JSON = {"content-type": "application/json"}
CHUNK = 50
#: SQLite's busy timeout and a writer's wait for its turn, short so a held lock fails fast.
SHORT_BUSY_S = 0.5


def alertmanager_message(n: int, services: int = 3, alertname: str = "InstanceDown") -> bytes:
    """One Alertmanager webhook message (version 4) of ``n`` firing alerts: one alert name on
    ``services`` services, a distinct instance (and fingerprint) per alert."""
    alerts = [{"status": "firing", "labels": {"alertname": alertname, "service": f"svc{i % services}",
                                              "instance": f"10.0.{i // 250}.{i % 250}:9100", "severity": "critical"},
               "annotations": {"summary": f"instance {i} is down"}, "startsAt": "2026-11-22T01:56:05.915Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus:9090/graph",
               "fingerprint": f"{i:016x}"} for i in range(n)]
    return json.dumps({"receiver": "heald", "status": "firing", "alerts": alerts, "groupLabels": {"alertname": alertname},
                       "commonLabels": {"alertname": alertname}, "commonAnnotations": {},
                       "externalURL": "http://alertmanager:9093", "version": "4",
                       "groupKey": f'{{}}:{{alertname="{alertname}"}}', "truncatedAlerts": 0}).encode()


def stored_fingerprints(rt: Runtime) -> Counter[str]:
    with rt.store.read() as s:
        return Counter(s.scalars(sa.select(SignalRow.fingerprint)))


@contextmanager
def on_commit(rt: Runtime, fn: Callable[[int], None]) -> Iterator[None]:
    """Call ``fn(signals in the database once this commits)`` at every commit on the store's
    write engine (from the committing thread, just before its COMMIT)."""
    def listener(conn: Any) -> None:
        fn(conn.exec_driver_sql("SELECT count(*) FROM signals").scalar())

    sa.event.listen(rt.store.engine, "commit", listener)
    try:
        yield
    finally:
        sa.event.remove(rt.store.engine, "commit", listener)


class Blocker:
    """Once ``after`` signals are committed, a thread opens a write transaction and holds it
    (SQLite's write lock) until :meth:`release`."""

    def __init__(self, rt: Runtime, after: int):
        self.rt, self.after = rt, after
        self.started, self.holding, self.done = False, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def __call__(self, committed: int) -> None:
        if committed >= self.after and not self.started:
            self.started = True
            self.thread.start()

    def _hold(self) -> None:
        with self.rt.store.tx() as s:
            s.execute(sa.select(1))
            self.holding.set()
            self.done.wait(30)

    def release(self) -> None:
        self.done.set()
        if self.started:
            self.thread.join(10)


@pytest.fixture
def short_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT", SHORT_BUSY_S)


def test_healthz_api_and_dashboard_answer_while_a_writer_holds_the_lock(api) -> None:
    client, rt = api
    with writer_holding_the_lock(rt.store):
        r = client.get("/healthz", timeout=5)  # the old code waited 30 s, then 500 "database is locked"
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert client.get("/v1/incidents", timeout=5).status_code == 200
        client.cookies.set(COOKIE, client.headers["authorization"].removeprefix("Bearer "))
        page = client.get("/", timeout=5)
        assert page.status_code == 200 and "Overview" in page.text


def test_a_big_message_is_stored_in_chunks_with_another_writer_between_and_each_alert_once(api_server) -> None:
    client, rt = api_server(api={"signals_per_transaction": CHUNK, "max_signals_per_message": 1000},
                            healing={"group_wait_seconds": 0})
    n = 300
    committed: list[int] = []
    between: list[int] = []  # the audit seq of a write made by another thread during the message

    def writer() -> None:
        between.append(rt.store.record(actor="test", event="test.between", reason="another writer").seq)

    def note(count: int) -> None:
        committed.append(count)
        if count == CHUNK and not between and not any(t.name == "between" for t in threading.enumerate()):
            threading.Thread(target=writer, name="between", daemon=True).start()

    with on_commit(rt, note):
        r = client.post("/v1/webhooks/alertmanager", content=alertmanager_message(n), headers=JSON, timeout=60)
    assert r.status_code == 202, r.text[:300]
    accepted = r.json()["accepted"]
    assert len(accepted) == n and len({a["signal_id"] for a in accepted}) == n
    # one commit per chunk of CHUNK signals (the old code: one commit of all 300)
    assert set(range(CHUNK, n + 1, CHUNK)) <= set(committed) and max(committed) == n
    fingerprints = stored_fingerprints(rt)
    assert len(fingerprints) == n and set(fingerprints.values()) == {1}  # every alert stored exactly once
    # the message is one Alertmanager group (its groupKey): one incident, whatever the services
    assert len({a["incident_id"] for a in accepted}) == 1 and sum(a["opened"] for a in accepted) == 1
    # the other writer committed before the message's last chunk, not after all of it
    [seq] = between
    with rt.store.read() as s:
        last_signal_audit = s.scalar(sa.select(sa.func.max(AuditRow.seq)).where(AuditRow.actor == "source:alertmanager"))
    assert seq < last_signal_audit
    # the incidents' healings started once the whole message was stored: every alert joined its
    # incident before it was diagnosed (as with one transaction), none moved on between chunks
    wait_for(lambda: _first_transition(rt) is not None, what="a healing to start")
    assert _first_transition(rt) > last_signal_audit


def _first_transition(rt: Runtime) -> int | None:
    with rt.store.read() as s:
        return s.scalar(sa.select(sa.func.min(AuditRow.seq)).where(AuditRow.event == "incident.transition"))


def test_a_transient_error_in_a_later_chunk_keeps_what_was_stored_and_asks_for_a_retry(api_server, short_busy) -> None:
    client, rt = api_server(api={"signals_per_transaction": CHUNK, "max_signals_per_message": 1000},
                            healing={"group_wait_seconds": 60.0})  # the healings wait while the lock is held
    n = 300
    body = alertmanager_message(n)
    blocker = Blocker(rt, after=2 * CHUNK)
    try:
        with on_commit(rt, blocker):
            r = client.post("/v1/webhooks/alertmanager", content=body, headers=JSON, timeout=60)
    finally:
        blocker.release()
    assert r.status_code == 503, r.text[:300]
    assert r.headers["retry-after"] == "5" and "send it again" in r.json()["detail"]
    accepted = r.json()["accepted"]
    assert 0 < len(accepted) < n and len(accepted) % CHUNK == 0  # whole chunks, committed
    stored = stored_fingerprints(rt)
    assert sum(stored.values()) == len(accepted)  # what the answer says was stored, nothing more, nothing lost
    with rt.store.read() as s:
        ids = set(s.scalars(sa.select(SignalRow.id)))
    assert ids == {a["signal_id"] for a in accepted}
    # Alertmanager sends the message again: the rest is stored, the alerts join the same incidents
    again = client.post("/v1/webhooks/alertmanager", content=body, headers=JSON, timeout=60)
    assert again.status_code == 202, again.text[:300]
    assert len(again.json()["accepted"]) == n and len(stored_fingerprints(rt)) == n
    assert {a["incident_id"] for a in again.json()["accepted"]} == {a["incident_id"] for a in accepted}


def test_a_delivery_stored_in_part_is_completed_by_its_redelivery_each_signal_once(api_server, short_busy) -> None:
    _, rt = api_server(api={"signals_per_transaction": CHUNK}, healing={"group_wait_seconds": 60.0})
    n = 120
    signals = [Signal(source="test", service=f"svc{i % 2}", summary=f"event {i}", labels={"alertname": "E", "i": str(i)},
                      fingerprint=f"delivery-{i}") for i in range(n)]
    blocker = Blocker(rt, after=CHUNK)
    try:
        with on_commit(rt, blocker), pytest.raises(IngestIncomplete) as failed:
            rt.ingest_delivery("test", "delivery-1", signals, actor="source:test")
    finally:
        blocker.release()
    first = failed.value.accepted
    assert failed.value.total == n and 0 < len(first) < n and len(first) % CHUNK == 0
    rest = rt.ingest_delivery("test", "delivery-1", signals, actor="source:test")
    assert rest is not None and len(first) + len(rest) == n
    assert rt.ingest_delivery("test", "delivery-1", signals, actor="source:test") is None  # stored whole: dropped
    stored = stored_fingerprints(rt)
    assert len(stored) == n and set(stored.values()) == {1}
