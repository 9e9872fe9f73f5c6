"""Ingest at Alertmanager's pace: heald on SQLite, heald on PostgreSQL and Debian's
Alertmanager (``POST /api/v2/alerts``) take the same alert stream in the same run, from one
load client (this process).

Each server runs in a process of its own (heald: a real :class:`heald.engine.Runtime` with its
HTTP API served by uvicorn on loopback, started by this script with ``--serve-heald``;
Alertmanager: ``prometheus-alertmanager`` with its state in a temporary directory, see
``/work/shared/recipes/prometheus-alertmanager.md``), so that its CPU time is its own
(``/proc/<pid>/stat``). For every batch size (alerts per message) and concurrency (senders at
once), the stream is ``--fingerprints`` new alerts, each of a fingerprint (and service) of its
own — *opening*: every one opens an incident in heald — then ``--alerts`` minus that many
duplicates of them, round-robin — *duplicates*: each joins its fingerprint's open incident.
heald receives Alertmanager's webhook message (version 4, without a ``groupKey``, so that the
alerts of a message are not one group), Alertmanager the same alerts on its API v2.

Printed per server × phase × batch × concurrency: alerts/s, request latency p50/p95/p99 (ms),
the server's CPU ms per alert, alerts stored vs accepted (heald: signals in its database with
that cell's services, each accepted alert stored once, ``lost`` = accepted − stored;
Alertmanager: the alerts it lists, one per fingerprint, ``lost`` = fingerprints − listed), whether
dedup was exact (heald: incidents opened = fingerprints, and every duplicate joined its
fingerprint's incident; Alertmanager: the alerts it lists = fingerprints), the ratio to
Alertmanager's alerts/s in the same cell, and the 1-minute load average when the cell ended.

Usage::

    .venv/bin/python bench/ingest.py [--alerts 20000] [--fingerprints 2000] [--batch 1 --batch 100]
        [--concurrency 1 --concurrency 8 --concurrency 32] [--server sqlite --server postgres
        --server alertmanager] [--baseline /path/to/older/checkout] [--quick] [--json]

``--baseline DIR`` runs another checkout's heald (``DIR/src``, this script's child with it first
on ``PYTHONPATH``) on SQLite first, as server ``baseline``, and gives the ratio of each sqlite
and postgres cell to it ("vs base"): e.g. ``git worktree add --detach /tmp/base 3f5a483``.
Its cells do not decide the exit status.

PostgreSQL: ``HEALD_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
a fresh database is created and dropped. ``--quick`` is a tiny run (the smoke test in
``tests/demo/test_ingest_bench.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

SERVERS = ("sqlite", "postgres", "alertmanager")
_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _wait_http(port: int, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200 within {timeout} s")


# -- the alerts -----------------------------------------------------------------------------------
def _alert(cell: str, k: int) -> dict[str, Any]:
    """Alert ``k`` of cell ``cell``: a fingerprint and service of its own."""
    labels = {"alertname": f"IngestBench{k % 7}", "service": f"{cell}-s{k}", "instance": f"10.0.{k // 250}.{k % 250}:9100",
              "job": "bench", "severity": "warning"}
    return {"labels": labels, "annotations": {"summary": f"bench alert {cell} {k}"},
            "startsAt": "2026-11-28T10:00:00Z", "generatorURL": "http://prometheus:9090/graph",
            "fingerprint": hashlib.sha256(f"{cell}/{k}".encode()).hexdigest()[:16]}


def _heald_body(alerts: list[dict[str, Any]]) -> bytes:
    """Alertmanager's webhook message (version 4) carrying ``alerts``, without a groupKey."""
    msg = {"receiver": "heald", "status": "firing", "version": "4", "groupLabels": {}, "commonLabels": {"job": "bench"},
           "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0,
           "alerts": [{**a, "status": "firing", "endsAt": "0001-01-01T00:00:00Z"} for a in alerts]}
    return json.dumps(msg).encode()


def _am_body(alerts: list[dict[str, Any]]) -> bytes:
    """The same alerts for Alertmanager's ``POST /api/v2/alerts`` (postableAlerts)."""
    return json.dumps([{k: a[k] for k in ("labels", "annotations", "startsAt", "generatorURL")} for a in alerts]).encode()


# -- the servers ----------------------------------------------------------------------------------
class Server:
    """A server under load: its process, port, request path and body encoder."""

    name: str
    pid: int
    port: int
    path: str
    headers: dict[str, str]

    def body(self, alerts: list[dict[str, Any]]) -> bytes:
        raise NotImplementedError

    def stored(self, cell: str, fingerprints: int) -> dict[str, Any]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class HealdServer(Server):
    """heald in a child process (this script with ``--serve-heald``) on ``database_url``."""

    def __init__(self, name: str, database_url: str, work: Path, src: Path | None = None):
        self.name, self.url = name, database_url
        self.state = work / name
        self.state.mkdir()
        self.port = _free_port()
        token_file = self.state / "token"
        env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None  # heald from another checkout
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-heald", str(self.state), database_url,
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=open(self.state / "log", "w"),
                                     env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while not token_file.exists() or not token_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"heald ({name}) did not start: {(self.state / 'log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.path = "/v1/webhooks/alertmanager"
        self.headers = {"Authorization": f"Bearer {token_file.read_text().strip()}", "Content-Type": "application/json"}
        from heald.store.db import normalize_url

        self.engine = sa.create_engine(normalize_url(database_url), poolclass=sa.pool.NullPool)

    def body(self, alerts: list[dict[str, Any]]) -> bytes:
        return _heald_body(alerts)

    def stored(self, cell: str, fingerprints: int) -> dict[str, Any]:
        like = f"{cell}-s%"
        with self.engine.connect() as c:
            signals = c.scalar(sa.text("SELECT count(*) FROM signals WHERE service LIKE :p"), {"p": like})
            incidents = c.scalar(sa.text("SELECT count(*) FROM incidents WHERE service LIKE :p"), {"p": like})
            # every signal joined the incident of its own service (its fingerprint's): none elsewhere, none loose
            stray = c.scalar(sa.text("SELECT count(*) FROM signals s LEFT JOIN incidents i ON i.id = s.incident_id "
                                     "WHERE s.service LIKE :p AND (i.id IS NULL OR i.service <> s.service)"), {"p": like})
        return {"stored": int(signals or 0), "exact": incidents == fingerprints and stray == 0,
                "incidents": int(incidents or 0)}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.engine.dispose()


class AlertmanagerServer(Server):
    """Debian's ``prometheus-alertmanager`` with a route to a receiver that sends nothing."""

    def __init__(self, work: Path):
        self.name = "alertmanager"
        binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if binary is None:
            raise RuntimeError("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
        d = work / "am"
        d.mkdir()
        (d / "am.yml").write_text("route: {receiver: 'null', group_by: [alertname, service], group_wait: 30s}\n"
                                  "receivers: [{name: 'null'}]\n")
        self.port = _free_port()
        self.proc = subprocess.Popen([binary, f"--config.file={d / 'am.yml'}", f"--storage.path={d / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        _wait_http(self.port, "/-/ready")
        self.path = "/api/v2/alerts"
        self.headers = {"Content-Type": "application/json"}

    def body(self, alerts: list[dict[str, Any]]) -> bytes:
        return _am_body(alerts)

    def stored(self, cell: str, fingerprints: int) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", "/api/v2/alerts?" + "filter=" + f'service%3D~%22{cell}-s.%2A%22')
        alerts = json.loads(conn.getresponse().read())
        return {"stored": len(alerts), "exact": len(alerts) == fingerprints, "incidents": None}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# -- the load -------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One measured cell: a server, a phase, a batch size and a concurrency."""

    server: str
    phase: str
    batch: int
    concurrency: int
    alerts: int
    seconds: float
    alerts_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_ms_per_alert: float
    accepted: int
    stored: int
    lost: int
    exact: bool
    errors: int
    load_avg: float
    ratio_to_alertmanager: float | None = None
    ratio_to_baseline: float | None = None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _send(server: Server, messages: list[list[dict[str, Any]]], concurrency: int) -> tuple[list[float], int, int, float]:
    """Send ``messages`` with ``concurrency`` senders (one keep-alive connection each); a 5xx is
    sent again after a short pause, as Alertmanager does. Returns (latencies s, alerts accepted,
    errors, wall seconds)."""
    bodies = [server.body(m) for m in messages]
    sizes = [len(m) for m in messages]
    latencies: list[float] = []
    accepted = [0]
    errors = [0]
    next_i = [0]
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        mine: list[float] = []
        ok = fail = 0
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(bodies):
                break
            for _ in range(20):
                t0 = time.perf_counter()
                try:
                    conn.request("POST", server.path, body=bodies[i], headers=server.headers)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                    fail += 1
                    continue
                mine.append(time.perf_counter() - t0)
                if resp.status < 300:
                    ok += sizes[i]
                    break
                fail += 1
                if resp.status < 500:
                    break
                time.sleep(0.2)
        conn.close()
        with lock:
            latencies.extend(mine)
            accepted[0] += ok
            errors[0] += fail

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, accepted[0], errors[0], time.perf_counter() - start


def run_cell(server: Server, cell: str, batch: int, concurrency: int, fingerprints: int,
             alerts: int) -> list[Cell]:
    """Both phases of one cell against ``server``; see the module docstring."""
    out = []
    stream = [_alert(cell, k) for k in range(fingerprints)]
    phases = {"opening": stream,
              "duplicates": [stream[k % fingerprints] for k in range(max(0, alerts - fingerprints))]}
    accepted_total = 0
    for phase, items in phases.items():
        if not items:
            continue
        messages = [items[i:i + batch] for i in range(0, len(items), batch)]
        cpu0 = _cpu_seconds(server.pid)
        lat, accepted, errors, secs = _send(server, messages, concurrency)
        cpu = _cpu_seconds(server.pid) - cpu0
        accepted_total += accepted
        got = server.stored(cell, fingerprints)
        stored = got["stored"]
        # heald stores every alert it accepted; Alertmanager keeps one alert per fingerprint
        lost = accepted_total - stored if server.name != "alertmanager" else fingerprints - stored
        out.append(Cell(server=server.name, phase=phase, batch=batch, concurrency=concurrency, alerts=len(items),
                        seconds=round(secs, 3), alerts_per_s=round(len(items) / secs, 1),
                        p50_ms=round(_pct(lat, 0.50) * 1000, 2), p95_ms=round(_pct(lat, 0.95) * 1000, 2),
                        p99_ms=round(_pct(lat, 0.99) * 1000, 2),
                        cpu_ms_per_alert=round(cpu * 1000 / max(1, len(items)), 3), accepted=accepted_total,
                        stored=stored, lost=lost, exact=bool(got["exact"]), errors=errors,
                        load_avg=round(os.getloadavg()[0], 2)))
    return out


def _pg_database(base_url: str) -> tuple[str, sa.Engine, str]:
    from heald.store.db import normalize_url

    name = f"heald_ingest_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalize_url(base_url), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(normalize_url(base_url)).set(database=name).render_as_string(hide_password=False)
    return url, admin, name


def run(servers: list[str], batches: list[int], concurrencies: list[int], fingerprints: int,
        alerts: int, baseline: Path | None = None) -> dict[str, Any]:
    """The whole benchmark; returns {"cells": [...], "load_avg": [1, 5, 15 min]} (see the module docstring).
    ``baseline``: another checkout, whose heald runs first on SQLite as server ``baseline``."""
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="heald-ingest-bench-") as tmp:
        work = Path(tmp)
        for name in (["baseline"] if baseline is not None else []) + servers:
            admin = db = None
            if name == "baseline":
                assert baseline is not None
                server: Server = HealdServer("baseline", f"sqlite:///{work / 'baseline' / 'heald.db'}", work,
                                             src=baseline / "src")
            elif name == "sqlite":
                server = HealdServer("sqlite", f"sqlite:///{work / 'sqlite' / 'heald.db'}", work)
            elif name == "postgres":
                url, admin, db = _pg_database(os.environ.get("HEALD_TEST_POSTGRES_URL",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"))
                server = HealdServer("postgres", url, work)
            else:
                server = AlertmanagerServer(work)
            try:
                for batch in batches:
                    for conc in concurrencies:
                        cell = f"b{batch}c{conc}{uuid.uuid4().hex[:4]}"
                        cells += run_cell(server, cell, batch, conc, fingerprints, alerts)
            finally:
                server.stop()
                if admin is not None:
                    with admin.connect() as c:
                        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                    admin.dispose()
    am = {(c.phase, c.batch, c.concurrency): c.alerts_per_s for c in cells if c.server == "alertmanager"}
    base = {(c.phase, c.batch, c.concurrency): c.alerts_per_s for c in cells if c.server == "baseline"}
    for c in cells:
        if (ref := am.get((c.phase, c.batch, c.concurrency))) and c.server != "alertmanager":
            c.ratio_to_alertmanager = round(c.alerts_per_s / ref, 4)
        if (ref := base.get((c.phase, c.batch, c.concurrency))) and c.server in ("sqlite", "postgres"):
            c.ratio_to_baseline = round(c.alerts_per_s / ref, 2)
    return {"cells": [asdict(c) for c in cells], "load_avg": [round(x, 2) for x in os.getloadavg()],
            "fingerprints": fingerprints, "alerts_per_cell": alerts, "cpus": os.cpu_count()}


def table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table."""
    head = (f"{'server':<12} {'phase':<10} {'batch':>5} {'conc':>4} {'alerts':>6} {'alerts/s':>9} {'p50ms':>7} "
            f"{'p95ms':>7} {'p99ms':>8} {'cpu ms/al':>9} {'accepted':>8} {'stored':>7} {'lost':>4} {'exact':>5} "
            f"{'err':>4} {'vs AM':>7} {'vs base':>7} {'load1':>5}")
    lines = [head, "-" * len(head)]
    for c in report["cells"]:
        ratio = f"{c['ratio_to_alertmanager'] * 100:.1f}%" if c["ratio_to_alertmanager"] is not None else "-"
        vs_base = f"{c['ratio_to_baseline']:.2f}x" if c.get("ratio_to_baseline") is not None else "-"
        lines.append(f"{c['server']:<12} {c['phase']:<10} {c['batch']:>5} {c['concurrency']:>4} {c['alerts']:>6} "
                     f"{c['alerts_per_s']:>9.1f} {c['p50_ms']:>7.2f} {c['p95_ms']:>7.2f} {c['p99_ms']:>8.2f} "
                     f"{c['cpu_ms_per_alert']:>9.3f} {c['accepted']:>8} {c['stored']:>7} {c['lost']:>4} "
                     f"{'yes' if c['exact'] else 'NO':>5} {c['errors']:>4} {ratio:>7} {vs_base:>7} {c['load_avg']:>5.2f}")
    la = report["load_avg"]
    lines.append(f"load average at the end: {la[0]} {la[1]} {la[2]} ({report['cpus']} CPUs); "
                 f"{report['fingerprints']} fingerprints, {report['alerts_per_cell']} alerts per cell")
    return "\n".join(lines)


# -- the heald child ------------------------------------------------------------------------------
def serve_heald(state_dir: str, database_url: str, port: int) -> None:
    """Run heald (Runtime + API) on ``database_url`` until SIGTERM; writes an operator token to
    ``<state_dir>/token`` once it answers."""
    import uvicorn

    from heald.api.app import create_app
    try:
        from heald.auth import issue_token
    except ImportError:  # an older heald (--baseline)
        from heald.api.auth import issue_token  # type: ignore[no-redef]
    from heald.config import HealdConfig
    from heald.engine import Runtime
    from heald.log import configure
    from heald.models import Role

    state = Path(state_dir)
    cfg = HealdConfig.model_validate({"state_dir": str(state), "database_url": database_url})
    cfg.resolve_paths(state)
    configure(cfg.log_level, json_logs=getattr(cfg, "log_format", "text") == "json")  # as `heald serve` logs
    rt = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.start()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="critical",
                                           access_log=False))

    def ready() -> None:
        while not server.started:
            time.sleep(0.05)
        older = "sponsor" not in inspect.signature(issue_token).parameters  # --baseline: an older heald
        _, token = issue_token(rt.store, name="bench", role=Role.operator, created_by="bench",
                               **({} if older else {"sponsor": None}))
        tmp = state / "token.tmp"
        tmp.write_text(token)
        tmp.rename(state / "token")

    threading.Thread(target=ready, daemon=True).start()
    try:
        server.run()
    finally:
        rt.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve-heald", nargs=3, metavar=("STATE_DIR", "DATABASE_URL", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--alerts", type=int, default=20_000, help="alerts per cell, opening and duplicates (20000)")
    p.add_argument("--fingerprints", type=int, default=2_000, help="fingerprints (incidents) per cell (2000)")
    p.add_argument("--batch", type=int, action="append", help="alerts per message (default: 1 and 100)")
    p.add_argument("--concurrency", type=int, action="append", help="senders at once (default: 1, 8 and 32)")
    p.add_argument("--server", choices=SERVERS, action="append", help="servers (default: all three)")
    p.add_argument("--quick", action="store_true", help="a tiny run: 20 fingerprints, 60 alerts, batch 1 and 10, "
                                                        "concurrency 1 and 4")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--baseline", type=Path, help="another checkout (e.g. a git worktree of an older commit): its heald "
                                                 "runs first, on SQLite, as server 'baseline'; sqlite and postgres "
                                                 "rows get the ratio to it ('vs base')")
    a = p.parse_args(argv)
    if a.serve_heald:
        serve_heald(a.serve_heald[0], a.serve_heald[1], int(a.serve_heald[2]))
        return 0
    if a.quick:
        a.fingerprints, a.alerts = 20, 60
        a.batch, a.concurrency = a.batch or [1, 10], a.concurrency or [1, 4]
    for name, value in (("--alerts", a.alerts), ("--fingerprints", a.fingerprints)):
        if value < 1:
            p.error(f"{name}: expected a positive number, got {value}")
    if a.baseline is not None and not (a.baseline / "src" / "heald").is_dir():
        p.error(f"--baseline: expected a heald checkout (with src/heald), got {a.baseline}")
    report = run(a.server or list(SERVERS), a.batch or [1, 100], a.concurrency or [1, 8, 32], a.fingerprints,
                 max(a.alerts, a.fingerprints), a.baseline)
    print(json.dumps(report, indent=2) if a.json else table(report))
    return 0 if all(c["lost"] == 0 and c["exact"] for c in report["cells"] if c["server"] != "baseline") else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
