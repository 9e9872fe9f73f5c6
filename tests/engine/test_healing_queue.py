"""Healings start off the request path (issue 19): on DBOS's healing queue, at most
``healing.max_concurrent`` acting at once, each enqueued with its group_wait as a DBOS delay (no thread
held while it waits); queued and delayed healings count as live for the reaper; DBOS's SQLite
system database is in WAL mode. Real runtimes, real DBOS on SQLite files."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from dbos import DBOS

from heald.engine import Runtime, workflow_id
from heald.models import IncidentState, Signal
from tests.conftest import make_config, wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def sig(service: str) -> Signal:
    return Signal.model_validate({"source": "test", "service": service, "summary": f"{service} down",
                                  "labels": {"alertname": "Down", "service": service}})


def statuses(ids: list[int]) -> Counter[str]:
    found = DBOS.list_workflows(workflow_ids=[workflow_id(i) for i in ids], load_input=False, load_output=False)
    return Counter(w.status for w in found)


def test_at_most_max_concurrent_healings_act_the_others_wait_queued_and_count_as_live(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    # each healing restarts its service and then verifies for a minute (its alert never resolves):
    # it acts all along. (A healing that waits for a human holds no slot: tests/engine/test_human_waits.py.)
    book = tmp_path / "runbooks.yaml"
    book.write_text(textwrap.dedent("""
        runbooks:
          - name: down
            match: {labels: ['alertname="Down"']}
            diagnosis: {category: svc_down, confidence: 0.95, explanation: "down"}
            remedies: [{remedy: restart_process, risk: low, params: {service: "${service}"}}]
    """))
    cfg = make_config(tmp_path, services={f"svc{k}": {"command": SLEEPER} for k in range(5)}, runbooks=[str(book)],
                      healing={"max_concurrent": 2, "group_wait_seconds": 0, "verify_timeout_seconds": 60})
    rt = start_runtime(cfg, run_probes=False, tail_logs=False)
    ids = [r.incident_id for r in rt.ingest_many([sig(f"svc{k}") for k in range(5)])]
    assert None not in ids
    opened = [i for i in ids if i is not None]
    wait_for(lambda: sum(rt.store.get_incident(i).state == IncidentState.verifying for i in opened) == 2,
             what="two healings to act")
    assert statuses(opened) == Counter({"PENDING": 2, "ENQUEUED": 3})
    assert sum(rt.store.get_incident(i).state == IncidentState.observing for i in opened) == 3  # not started
    assert rt.reap_stranded_incidents() == {"started": [], "resumed": [], "failed": []}  # queued is alive
    assert statuses(opened) == Counter({"PENDING": 2, "ENQUEUED": 3})


def test_the_group_wait_holds_no_thread_and_a_second_start_changes_nothing(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    cfg = make_config(tmp_path, healing={"group_wait_seconds": 600})
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    before = threading.active_count()
    results = rt.ingest_many([sig(f"svc{k}") for k in range(20)])
    opened = [r.incident_id for r in results if r.incident_id is not None]
    assert len(opened) == 20
    assert rt.dispatcher.wait_idle()  # enqueued off the request path, each once
    assert statuses(opened) == Counter({"DELAYED": 20})
    assert threading.active_count() <= before + 2  # not one sleeping thread per incident
    assert rt.resume_open_incidents() == 20  # heald's restart path: starts nothing twice
    assert statuses(opened) == Counter({"DELAYED": 20})
    assert rt.reap_stranded_incidents() == {"started": [], "resumed": [], "failed": []}


def test_dbos_sqlite_system_database_is_in_wal_mode(tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    cfg = make_config(tmp_path)
    start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    with sqlite3.connect(cfg.state_dir / "dbos.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_message_is_answered_before_its_healings_are_enqueued(
        tmp_path: Path, start_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    """The healings of the incidents a message opened are enqueued off the request path
    (``Runtime.dispatcher``): storing the message does not wait for DBOS to record them, and
    they are enqueued in order once it can."""
    enqueue = threading.Event()
    started: list[int] = []
    original = Runtime.start_healing

    def slow_start(self: Runtime, incident_id: int, delay_seconds: float | None = None) -> None:
        assert enqueue.wait(30), "the test never let DBOS enqueue"
        started.append(incident_id)
        original(self, incident_id, delay_seconds)

    monkeypatch.setattr(Runtime, "start_healing", slow_start)
    cfg = make_config(tmp_path, healing={"group_wait_seconds": 600})
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    answered: list[list[int | None]] = []
    sender = threading.Thread(target=lambda: answered.append(
        [r.incident_id for r in rt.ingest_many([sig(f"svc{k}") for k in range(5)])]), daemon=True)
    sender.start()
    sender.join(10)
    try:
        assert answered and None not in answered[0], "the message waited for DBOS to enqueue its healings"
        assert rt.store.list_incidents(limit=10) and not started
    finally:
        enqueue.set()
    assert rt.dispatcher.wait_idle()
    assert started == answered[0]  # in order, each once
    assert statuses(started) == Counter({"DELAYED": 5})
