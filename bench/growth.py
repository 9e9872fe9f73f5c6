"""API, dashboard and CLI latencies as heald's history grows (issue 19, growth).

For each size N (default 1,000, 10,000 and 100,000) seeds a fresh SQLite store directly with
bulk inserts — N incidents (closed: resolved, each with its outcome and its ``incident.opened``
and ``incident.transition`` audit entries), N signals on incident 1 (the "big" incident, each
with its ``signal.firing`` audit entry, so its timeline has N + 2 entries), N / 10 expired
silences, and a valid audit chain over all of it (about 3N entries) — then starts ``heald
serve`` on it (a subprocess, ``api.auth: false`` on loopback, no services) and times each
request ``--reps`` times after one warm-up: median and max in milliseconds, and the size of
the answer. It also times the read-only CLI commands (``heald incidents``, ``heald status``,
``heald audit list``) as subprocesses, wall clock, the Python start-up included.

Requests: the API's incident list, summary, the big incident (``/v1/incidents/1``, its signals
and timeline), a small incident, the big incident's report, silences and ``/metrics``; the
dashboard's overview, incidents page, the big incident's page, the audit page and the sources
page. A request that does not exist in the code under test (a 404 of a newer endpoint) shows
``n/a``.

To compare with another checkout, run this file with that checkout's interpreter, e.g.
``/work/main/.venv/bin/python bench/growth.py`` (the script imports heald from wherever that
interpreter finds it).

Usage::

    .venv/bin/python bench/growth.py [--sizes 1000 10000 100000] [--reps 5] [--json]
    .venv/bin/python bench/growth.py --smoke      # sizes 200 and 1000, 2 reps: a quick check
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from _common import stop, wait_healthy

#: (group, name, path) of every timed request; ``{small}`` is an incident with one signal.
REQUESTS: list[tuple[str, str, str]] = [
    ("api", "GET /v1/incidents", "/v1/incidents"),
    ("api", "GET /v1/incidents/summary", "/v1/incidents/summary"),
    ("api", "GET /v1/incidents/1 (N signals)", "/v1/incidents/1"),
    ("api", "GET /v1/incidents/1/signals", "/v1/incidents/1/signals"),
    ("api", "GET /v1/incidents/1/timeline", "/v1/incidents/1/timeline"),
    ("api", "GET /v1/incidents/{small}", "/v1/incidents/{small}"),
    ("api", "GET /v1/incidents/1/report", "/v1/incidents/1/report"),
    ("api", "GET /v1/silences", "/v1/silences"),
    ("api", "GET /metrics", "/metrics"),
    ("ui", "/ (overview)", "/"),
    ("ui", "/incidents", "/incidents"),
    ("ui", "/incidents/1 (N signals)", "/incidents/1"),
    ("ui", "/audit", "/audit"),
    ("ui", "/sources", "/sources"),
]
CLI = [("cli", "heald incidents", ["incidents"]), ("cli", "heald status", ["status"]),
       ("cli", "heald audit list", ["audit", "list", "--limit", "50"])]
SERVICES = 50


def _entry_hash(seq: int, ts: str, actor: str, event: str, incident_id: int | None, reason: str,
                details: dict[str, Any], prev: str) -> str:
    """The chain hash of :func:`heald.store.audit.entry_hash` (the same canonical JSON)."""
    body = json.dumps({"seq": seq, "ts": ts, "actor": actor, "event": event, "incident_id": incident_id,
                       "reason": reason, "details": details}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((body + prev).encode()).hexdigest()


def seed(url: str, n: int) -> dict[str, int]:
    """Fill the store at ``url`` (migrated by heald's own :meth:`Store.migrate`) with ``n``
    incidents, ``n`` signals on incident 1, ``n // 10`` silences and the audit chain; returns
    the counts."""
    from heald.store import Store
    from heald.store.tables import AuditHeadRow, AuditRow, IncidentRow, OutcomeRow, SignalRow, SilenceRow

    store = Store(url)
    store.migrate()
    rng = random.Random(19)
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=30)
    incidents, outcomes, signals, audit = [], [], [], []
    seq, prev = 0, "0" * 64

    def log(ts: datetime, actor: str, event: str, incident_id: int | None, reason: str, details: dict[str, Any]) -> None:
        nonlocal seq, prev
        seq += 1
        digest = _entry_hash(seq, ts.isoformat(), actor, event, incident_id, reason, details, prev)
        audit.append({"seq": seq, "ts": ts, "actor": actor, "event": event, "incident_id": incident_id,
                      "reason": reason, "details": details, "prev_hash": prev, "hash": digest})
        prev = digest

    for i in range(1, n + 1):
        svc = f"svc{i % SERVICES}"
        detected = t0 + timedelta(seconds=i * (30 * 86400 / n))
        closed = detected + timedelta(seconds=rng.uniform(5, 600))
        incidents.append({"id": i, "title": f"{svc} is down", "service": svc, "state": "resolved",
                          "severity": "critical", "fingerprint": f"{i:016x}", "group_key": f"{i:016x}",
                          "labels": {"alertname": "ServiceDown", "service": svc}, "category": "process_crashed",
                          "environment": "production", "attempts": 1, "started_at": detected,
                          "detected_at": detected, "updated_at": closed, "recovered_at": closed,
                          "closed_at": closed, "closed_reason": "verified"})
        outcomes.append({"incident_id": i, "category": "process_crashed", "remedy": "restart_process",
                         "result": "healed", "attempt": 0, "time_to_detect_s": 1.0,
                         "time_to_recover_s": (closed - detected).total_seconds(), "created_at": closed})
        log(detected, "heald", "incident.opened", i, f"{svc} is down", {"fingerprint": f"{i:016x}"})
        if i > 1:
            log(closed, "heald", "incident.transition", i, "verified", {"from": "verifying", "to": "resolved"})
    first = incidents[0]
    for j in range(n):
        ts = first["detected_at"] + timedelta(milliseconds=j)
        fp = f"{j % 100:016x}"
        status = "firing" if j % 2 == 0 else "resolved"
        signals.append({"source": "alertmanager", "kind": "alert", "service": "svc1", "status": status,
                        "severity": "critical", "summary": f"instance {j} is down",
                        "labels": {"alertname": "InstanceDown", "instance": f"10.0.{j // 250 % 250}.{j % 250}"},
                        "annotations": {"summary": f"instance {j} is down"}, "fingerprint": fp, "starts_at": ts,
                        "ends_at": None, "received_at": ts, "raw_ref": None, "incident_id": 1,
                        "suppressed_by": None, "group_key": "0000000000000001"})
        log(ts, "alertmanager", f"signal.{status}", 1, f"instance {j} is down", {"fingerprint": fp})
    log(first["closed_at"], "heald", "incident.transition", 1, "verified", {"from": "verifying", "to": "resolved"})
    silences = [{"matchers": [f'service="svc{k % SERVICES}"'], "starts_at": t0, "ends_at": t0 + timedelta(hours=1),
                 "comment": "maintenance", "created_by": "user:bench", "created_at": t0, "expired_at": None,
                 "expired_by": None} for k in range(n // 10)]
    # the chain must be in seq order with dense numbers: sort by time would break it, so the
    # big incident's signals simply come after the incidents in the log
    with store.engine.begin() as conn:
        for table, rows in ((IncidentRow, incidents), (OutcomeRow, outcomes), (SignalRow, signals),
                            (SilenceRow, silences), (AuditRow, audit)):
            for k in range(0, len(rows), 5000):
                conn.execute(sa.insert(table), rows[k:k + 5000])
        # the database lets the head only start at entry 1 and move to the next entry (a trigger)
        conn.execute(sa.insert(AuditHeadRow), [{"id": 1, "seq": 1, "hash": audit[0]["hash"]}])
        conn.execute(sa.update(AuditHeadRow).where(AuditHeadRow.id == 1)
                     .values(seq=sa.bindparam("s"), hash=sa.bindparam("h")),
                     [{"s": e["seq"], "h": e["hash"]} for e in audit[1:]])
    store.close()
    return {"incidents": n, "signals": n, "silences": len(silences), "audit_entries": seq}


def start_heald(config_path: Path, state: Path, port: int) -> subprocess.Popen[bytes]:
    """``heald serve`` on ``config_path``, answering on ``port`` (waits for ``/healthz``)."""
    log = (state / "heald.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "heald.cli", "--config", str(config_path), "serve"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=state)
    wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, state / "heald.log", timeout=300, interval=0.2)
    return proc


def timed(fn: Any, reps: int) -> dict[str, Any]:
    """Run ``fn`` (returning (ok, size)) once to warm up, then ``reps`` times; ms figures."""
    ok, size = fn()
    if not ok:
        return {"median_ms": None, "max_ms": None, "bytes": size, "ok": False}
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ok, size = fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times), "bytes": size, "ok": ok}


def run_size(n: int, reps: int, work: Path) -> dict[str, Any]:
    """Seed a store of size ``n``, start heald on it and time every request and CLI command."""
    from heald.demo.runner import free_port

    state = work / f"n{n}"
    (state / "state").mkdir(parents=True)
    port = free_port()
    config = {"state_dir": str(state / "state"), "log_level": "warning", "api": {"port": port, "auth": False}}
    config_path = state / "heald.yaml"
    config_path.write_text(yaml.safe_dump(config))
    t = time.perf_counter()
    counts = seed(f"sqlite:///{state / 'state' / 'heald.db'}", n)
    seed_s = time.perf_counter() - t
    t = time.perf_counter()
    proc = start_heald(config_path, state, port)
    start_s = time.perf_counter() - t
    rows: list[dict[str, Any]] = []
    try:
        for group, name, path in REQUESTS:
            url = path.replace("{small}", str(max(2, n // 2)))

            def get(url: str = url) -> tuple[bool, int]:
                # a new connection per request, as http.client makes it: a kept-alive httpx
                # connection adds ~40 ms per request here (delayed ACKs), hiding the server's time
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                try:
                    conn.request("GET", url)
                    r = conn.getresponse()
                    return r.status == 200, len(r.read())
                finally:
                    conn.close()
            rows.append({"group": group, "name": name.replace("{small}", "small"), **timed(get, reps)})
        for group, name, args in CLI:
            def cli(args: list[str] = args) -> tuple[bool, int]:
                r = subprocess.run([sys.executable, "-m", "heald.cli", "--config", str(config_path), *args],
                                   capture_output=True, cwd=state, timeout=600)
                return r.returncode == 0, len(r.stdout)
            rows.append({"group": group, "name": name, **timed(cli, max(1, reps // 2))})
    finally:
        stop(proc)
    return {"n": n, **counts, "seed_s": seed_s, "start_s": start_s, "requests": rows,
            "loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}


def table(results: list[dict[str, Any]]) -> str:
    """The results as a text table: one row per request, median / max ms per size."""
    sizes = [r["n"] for r in results]
    names = [(row["group"], row["name"]) for row in results[0]["requests"]]
    head = f"{'request':<34}" + "".join(f"{f'N={n:,}':>22}" for n in sizes)
    lines = [head, f"{'':<34}" + "".join(f"{'median / max ms':>22}" for _ in sizes), "-" * len(head)]
    for group, name in names:
        cells = []
        for r in results:
            row = next(x for x in r["requests"] if (x["group"], x["name"]) == (group, name))
            cells.append(f"{'n/a':>22}" if not row["ok"] else f"{row['median_ms']:>11.1f} / {row['max_ms']:>8.1f}")
        lines.append(f"{group + ' ' + name:<34}" + "".join(cells))
    lines.append("-" * len(head))
    lines.append(f"{'audit entries':<34}" + "".join(f"{r['audit_entries']:>22,}" for r in results))
    lines.append(f"{'heald serve start-up s':<34}" + "".join(f"{r['start_s']:>22.1f}" for r in results))
    lines.append(f"{'load average (1 min) after':<34}" + "".join(f"{r['loadavg_1m']:>22.2f}" for r in results))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="sizes 200 and 1000, 2 repetitions")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    sizes, reps = ([200, 1000], 2) if args.smoke else (args.sizes, args.reps)
    import heald

    results = []
    with tempfile.TemporaryDirectory(prefix="heald-growth-") as tmp:
        for n in sizes:
            results.append(run_size(n, reps, Path(tmp)))
            if not args.json:
                print(f"N={n:,}: seeded in {results[-1]['seed_s']:.1f} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"heald": str(Path(heald.__file__).parent), "results": results}, indent=2))
    else:
        print(f"heald from {Path(heald.__file__).parent}; {os.cpu_count()} CPUs")
        print(table(results))


if __name__ == "__main__":
    main()
