"""heald on PostgreSQL under load: concurrent Alertmanager senders, and heald's database
connections killed while they send.

A real heald runtime (store and DBOS on one fresh PostgreSQL database, the HTTP API served by
uvicorn on loopback) receives ``--senders`` concurrent senders × ``--alerts`` Alertmanager
alerts each, in webhook messages of ``--batch`` alerts (the shape of Alertmanager's webhook,
``../shared/corpus/alertmanager/received.json``), spread over services × alert names so that
they make a few dozen incidents. Every ``--kill-every`` seconds, ``pg_terminate_backend`` ends
every connection heald has to the database. A sender does what Alertmanager does: a 5xx or a
dropped request is sent again (after ``Retry-After``, capped here at 0.5 s). After the last
message the script waits (at most ``--settle`` seconds) for every incident to end or to have a
live workflow, and prints:

requests/s, HTTP answers by status (5xx must be 0), deadlocks PostgreSQL counted
(``pg_stat_database.deadlocks``), alerts stored (each exactly once), incidents by state, frozen
incidents (open with no live workflow; must be 0), and whether the audit chain verifies.

Usage::

    HEALD_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/pg_load.py [--senders 8] [--alerts 250] [--batch 5] [--kill-every 2] [--json]

``tests/engine/test_pg_load.py`` runs :func:`run_load` at a bounded size in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

LIVE = ("PENDING", "ENQUEUED", "DELAYED")


@dataclass
class LoadResult:
    """What :func:`run_load` measured."""

    senders: int
    alerts_sent: int
    requests: int
    seconds: float
    requests_per_s: float
    statuses: dict[str, int]
    server_errors: int
    dropped_requests: int
    kills: int
    connections_killed: int
    deadlocks: int
    signals_stored: int
    alerts_stored_twice: int
    alerts_missing: int
    incidents: int
    incidents_by_state: dict[str, int]
    frozen: list[int] = field(default_factory=list)
    open_with_live_workflow: int = 0
    audit_intact: bool = False


def alert_message(sender: int, first: int, count: int, services: int, names: int) -> dict[str, Any]:
    """One Alertmanager webhook message (version 4) of ``count`` firing alerts, numbered from
    ``first``, each with labels of its own (a fingerprint of its own): service ``svc<k % services>``,
    alert name ``LoadAlert<k % names>``."""
    alerts = []
    for k in range(first, first + count):
        labels = {"alertname": f"LoadAlert{k % names}", "service": f"svc{k % services}", "job": "load",
                  "instance": f"10.{sender}.{k // 250}.{k % 250}:9100", "severity": "warning"}
        alerts.append({"status": "firing", "labels": labels,
                       "annotations": {"summary": f"load alert {sender}-{k}"},
                       "startsAt": "2026-11-28T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                       "generatorURL": "http://prometheus:9090/graph", "fingerprint": f"{sender:04x}{k:012x}"})
    common = {"job": "load", "severity": "warning"}
    return {"receiver": "heald", "status": "firing", "alerts": alerts, "groupLabels": {"job": "load"},
            "commonLabels": common, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "version": "4", "groupKey": '{}:{job="load"}', "truncatedAlerts": 0}


def _deadlocks(admin: sa.Engine, db: str) -> int:
    with admin.connect() as c:
        return int(c.scalar(sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = :d"), {"d": db}) or 0)


def _workflow_states(incident_ids: list[int]) -> dict[int, str | None]:
    from dbos import DBOS

    from heald.engine.steps import workflow_id

    out: dict[int, str | None] = {}
    for i in incident_ids:
        status = DBOS.get_workflow_status(workflow_id(i))
        out[i] = status.status if status is not None else None
    return out


def run_load(database_url: str, state_dir: Path, *, senders: int = 4, alerts: int = 500, batch: int = 5,
             kill_every: float = 2.0, services: int = 8, names: int = 3, settle: float = 60.0,
             reap_interval: float = 2.0) -> LoadResult:
    """Run the load (see the module docstring) against a heald on ``database_url`` (an empty
    PostgreSQL database) with its state in ``state_dir``; returns the figures. ``kill_every``
    0 kills nothing."""
    import uvicorn

    from heald.api.app import create_app
    from heald.auth import issue_token
    from heald.config import HealdConfig
    from heald.demo.runner import free_port
    from heald.engine import Runtime
    from heald.models import Role
    from heald.store.db import normalize_url

    cfg = HealdConfig.model_validate({
        "state_dir": str(state_dir), "database_url": database_url,
        "healing": {"group_wait_seconds": 2.0, "retry_delay_seconds": 0.2, "stabilization_seconds": 0.3,
                    "verify_interval_seconds": 0.05, "verify_timeout_seconds": 3.0},
    })
    cfg.resolve_paths(state_dir)
    db = sa.make_url(normalize_url(database_url)).database or ""
    admin = sa.create_engine(normalize_url(database_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    rt = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.reap_interval_seconds = reap_interval
    rt.start()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=free_port(), log_level="critical"))
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        _, token = issue_token(rt.store, name="load", role=Role.operator, created_by="bench", sponsor=None)
        base = f"http://127.0.0.1:{server.config.port}"
        deadlocks_before = _deadlocks(admin, db)
        statuses: Counter[str] = Counter()
        dropped = [0]
        count_lock = threading.Lock()
        done = threading.Event()
        kills = [0, 0]

        def killer() -> None:
            while not done.wait(kill_every):
                with admin.connect() as c:
                    n = c.scalar(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                         "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": db})
                kills[0] += 1
                kills[1] += int(n or 0)

        def sender(s: int) -> None:
            with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
                for first in range(0, alerts, batch):
                    body = alert_message(s, first, min(batch, alerts - first), services, names)
                    for _ in range(50):  # Alertmanager retries a failed notification
                        try:
                            r = client.post("/v1/webhooks/alertmanager", json=body)
                        except httpx.HTTPError:
                            with count_lock:
                                dropped[0] += 1
                            time.sleep(0.2)
                            continue
                        with count_lock:
                            statuses[str(r.status_code)] += 1
                        if r.status_code < 500:
                            break
                        time.sleep(min(float(r.headers.get("retry-after", "0.2")), 0.5))

        kill_thread = threading.Thread(target=killer, daemon=True)
        if kill_every > 0:
            kill_thread.start()
        started = time.monotonic()
        threads = [threading.Thread(target=sender, args=(s,)) for s in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - started
        done.set()
        if kill_every > 0:
            kill_thread.join()

        # settle: every incident ends, or at least none is open without a live workflow
        settle_end = time.monotonic() + settle
        frozen: list[int] = []
        live = 0
        while True:
            open_ids = [i.id for i in rt.store.list_incidents(limit=10_000) if not i.state.terminal]
            states = _workflow_states(open_ids)
            frozen = sorted(i for i, st in states.items() if st not in LIVE)
            live = sum(1 for st in states.values() if st in LIVE)
            if (not open_ids) or time.monotonic() > settle_end:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # PostgreSQL's statistics are flushed about once a second
        deadlocks = _deadlocks(admin, db) - deadlocks_before
        with admin.connect() as c:
            stored = int(c.scalar(sa.text("SELECT count(*) FROM signals WHERE source = 'alertmanager'")) or 0)
            twice = int(c.scalar(sa.text(
                "SELECT count(*) FROM (SELECT labels->>'instance', labels->>'alertname', count(*) FROM signals "
                "WHERE source = 'alertmanager' GROUP BY 1, 2 HAVING count(*) > 1) d")) or 0)
            distinct = int(c.scalar(sa.text(
                "SELECT count(DISTINCT (labels->>'instance', labels->>'alertname')) FROM signals "
                "WHERE source = 'alertmanager'")) or 0)
            by_state = {k: int(v) for k, v in c.execute(sa.text("SELECT state, count(*) FROM incidents GROUP BY state"))}
        requests = sum(statuses.values())
        return LoadResult(
            senders=senders, alerts_sent=senders * alerts, requests=requests, seconds=round(seconds, 2),
            requests_per_s=round(requests / seconds, 1) if seconds else 0.0, statuses=dict(statuses),
            server_errors=sum(n for code, n in statuses.items() if code.startswith("5")), dropped_requests=dropped[0],
            kills=kills[0], connections_killed=kills[1], deadlocks=deadlocks, signals_stored=stored,
            alerts_stored_twice=twice, alerts_missing=senders * alerts - distinct,
            incidents=sum(by_state.values()), incidents_by_state=by_state, frozen=frozen, open_with_live_workflow=live,
            audit_intact=rt.store.verify_audit().intact)
    finally:
        server.should_exit = True
        server_thread.join(timeout=10)
        rt.stop()
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--alerts", type=int, default=250, help="alerts per sender")
    ap.add_argument("--batch", type=int, default=5, help="alerts per webhook message")
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds between connection kills (0: none)")
    ap.add_argument("--settle", type=float, default=120.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = os.environ.get("HEALD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    from heald.store.db import normalize_url

    admin = sa.create_engine(normalize_url(server), isolation_level="AUTOCOMMIT")
    name = f"heald_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(normalize_url(server)).set(database=name).render_as_string(hide_password=False)
    try:
        with tempfile.TemporaryDirectory(prefix="heald-pg-load-") as tmp:
            result = run_load(url, Path(tmp) / "state", senders=args.senders, alerts=args.alerts, batch=args.batch,
                              kill_every=args.kill_every, settle=args.settle)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return
    r = result
    print(f"{r.senders} senders x {r.alerts_sent // r.senders} alerts in messages of {args.batch}: "
          f"{r.requests} requests in {r.seconds:.1f} s = {r.requests_per_s:.1f} requests/s "
          f"({r.alerts_sent / r.seconds:.0f} alerts/s)")
    print(f"HTTP answers: {dict(sorted(r.statuses.items()))}; 5xx: {r.server_errors}; dropped requests: {r.dropped_requests}")
    print(f"connection kills: {r.kills} rounds, {r.connections_killed} connections ended")
    print(f"deadlocks (pg_stat_database): {r.deadlocks}")
    print(f"alerts stored: {r.signals_stored} of {r.alerts_sent}; stored twice: {r.alerts_stored_twice}; "
          f"missing: {r.alerts_missing}")
    print(f"incidents: {r.incidents} {dict(sorted(r.incidents_by_state.items()))}; open with a live workflow: "
          f"{r.open_with_live_workflow}; frozen: {len(r.frozen)} {r.frozen[:20]}")
    print(f"audit chain intact: {r.audit_intact}")


if __name__ == "__main__":
    main()
