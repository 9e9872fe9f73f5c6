"""Several heald workers on one PostgreSQL database against one Alertmanager alert stream, beside
Debian's Alertmanager ingesting the same stream (issue 14).

For 1, 2 and 3 workers (real ``heald serve`` processes on loopback, one fresh database each
time), the client sends ``--alerts`` alerts over ``--fingerprints`` label sets (each repeat of a
fingerprint a new firing episode, its own ``startsAt``) as Alertmanager webhook messages of
``--batch`` alerts, ``--concurrency`` at a time, spread round-robin over the workers like a load
balancer; every ``--fanout``-th message goes to two workers at once (Alertmanager with two
webhook URLs). With two or more workers one worker is SIGKILLed halfway: a request it does not
answer is sent to the next worker (as a load balancer retries). Afterwards the signals stored
must be exactly the alerts sent: 0 lost, none stored twice (the fan-out and the retries of
requests the killed worker had already committed are dropped as the same delivery).

Debian's Alertmanager gets the same alerts at ``POST /api/v2/alerts`` (its own ingest and
dedup: it keeps one alert per label set), same batches and concurrency.

Failover: ``--failovers`` times, one worker runs a healing held by a fail point just after its
remedy ran; a second worker joins; the first is SIGKILLed; the time until the second worker
has resumed the healing and closed the incident (the remedy not run again) is measured; the
table gives the median.

Prints a table (``--json``: the same as JSON). ``--small`` runs a quick, small size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from heald.store.db import normalize_url

SERVER = os.environ.get("HEALD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    from heald.demo.runner import free_port as fp

    return fp()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database on the test server, dropped afterwards."""
    admin = sa.create_engine(normalize_url(SERVER), isolation_level="AUTOCOMMIT")
    name = f"heald_scale_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(normalize_url(SERVER)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- the alert stream ------------------------------------------------------------------------
def alerts(n: int, fingerprints: int) -> list[dict[str, Any]]:
    """``n`` firing alerts over ``fingerprints`` label sets; repeat r of a label set starts r
    seconds after the first (a new firing episode)."""
    out = []
    for k in range(n):
        f, r = k % fingerprints, k // fingerprints
        labels = {"alertname": f"ScaleAlert{f % 20}", "service": f"svc{f % 50}", "job": "scale",
                  "instance": f"10.0.{f // 250}.{f % 250}:9100", "severity": "warning"}
        out.append({"labels": labels, "annotations": {"summary": f"alert {k}"},
                    "startsAt": f"2026-11-28T10:{r // 60 % 60:02d}:{r % 60:02d}Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph", "fingerprint": f"{f:016x}"})
    return out


def webhook_message(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """An Alertmanager webhook message (version 4) carrying ``batch``."""
    return {"receiver": "heald", "status": "firing", "alerts": [{**a, "status": "firing"} for a in batch],
            "groupLabels": {"job": "scale"}, "commonLabels": {"job": "scale"}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "version": "4", "groupKey": '{}:{job="scale"}',
            "truncatedAlerts": 0}


@dataclass
class StreamResult:
    """One target's run of the stream."""

    target: str
    alerts: int
    seconds: float
    alerts_per_s: float
    p50_ms: float
    p99_ms: float
    stored: int | None
    lost: int | None
    twice: int | None
    requests: int
    retried: int
    fanout_messages: int
    killed: str | None
    load1: float
    statuses: dict[str, int] = field(default_factory=dict)


def send_stream(urls: list[str], messages: list[Any], concurrency: int, fanout: int,
                kill: tuple[int, subprocess.Popen[bytes]] | None = None) -> tuple[list[float], int, int, dict[str, int]]:
    """POST ``messages`` spread round-robin over ``urls`` (every ``fanout``-th to two of them at
    once; 0: none), ``concurrency`` at a time; a request a worker does not answer goes to the
    next URL. ``kill``: (message number, process) SIGKILLed when that message is sent.
    Returns (latencies in seconds, retries, fan-out messages, statuses)."""
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    retries = [0]
    dead: set[str] = set()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=60)
        return local.c  # type: ignore[no-any-return]

    def post(i: int, start: int, body: Any) -> None:
        for attempt in range(len(urls) * 3):
            url = urls[(start + attempt) % len(urls)]
            if url in dead:
                continue
            t0 = time.perf_counter()
            try:
                r = client().post(url, json=body)
            except httpx.HTTPError:
                with lock:
                    retries[0] += 1
                time.sleep(0.05)
                continue
            if r.status_code >= 500:
                with lock:
                    retries[0] += 1
                time.sleep(0.2)
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            return
        raise RuntimeError(f"message {i}: no worker accepted it")

    def one(i: int) -> None:
        if kill is not None and i == kill[0]:
            kill[1].send_signal(signal.SIGKILL)
        body = messages[i]
        if fanout and len(urls) > 1 and i % fanout == 0:
            both = [threading.Thread(target=post, args=(i, i + j, body)) for j in (0, 1)]
            for t in both:
                t.start()
            for t in both:
                t.join()
        else:
            post(i, i, body)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(messages))))
    fanned = sum(1 for i in range(len(messages)) if fanout and len(urls) > 1 and i % fanout == 0)
    return latencies, retries[0], fanned, statuses


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else 0.0


# -- heald workers ------------------------------------------------------------------------------
def heald_config(tmp: Path, url: str, extra: dict[str, Any] | None = None) -> Path:
    cfg: dict[str, Any] = {"database_url": url, "database_lock": False, "api": {"auth": False}, "log_level": "warning",
                           "log_format": "console", "default_runbooks": False,
                           "cluster": {"heartbeat_interval_seconds": 0.5, "heartbeat_timeout_seconds": 3.0},
                           "correlation": {"group_by": ["job"]}, **(extra or {})}
    path = tmp / "heald.yaml"
    path.write_text(json.dumps(cfg))
    return path


def start_worker(config: Path, tmp: Path, eid: str, failpoints: str = "") -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEALD_")}, "HEALD_EXECUTOR_ID": eid,
           "HEALD_STATE_DIR": str(tmp / f"state-{eid}"), "HEALD_FAILPOINTS": failpoints}
    log = tmp / f"{eid}.log"
    proc = subprocess.Popen([sys.executable, "-m", "heald.cli", "--config", str(config), "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    return proc, port, log


def wait_up(port: int, proc: subprocess.Popen[bytes], path: str = "/healthz", timeout: float = 120,
            log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-1000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"process on port {port} exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g} s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stored_counts(url: str, sent: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(signals stored, alerts missing, alerts stored more than once) by (fingerprint, startsAt)."""
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as c:
            total = c.execute(sa.text("SELECT count(*) FROM signals")).scalar_one()
            rows = c.execute(sa.text("SELECT labels, starts_at FROM signals")).all()
    finally:
        engine.dispose()
    seen: dict[tuple[str, str], int] = {}
    for labels, starts in rows:
        lab = labels if isinstance(labels, dict) else json.loads(labels)
        seen[(lab.get("instance", ""), starts.strftime("%H:%M:%S"))] = seen.get(
            (lab.get("instance", ""), starts.strftime("%H:%M:%S")), 0) + 1
    want = {(a["labels"]["instance"], a["startsAt"][11:19]) for a in sent}
    missing = sum(1 for k in want if k not in seen)
    twice = sum(n - 1 for n in seen.values() if n > 1)
    return int(total), missing, twice


def run_heald(workers: int, sent: list[dict[str, Any]], batch: int, concurrency: int, fanout: int) -> StreamResult:
    messages = [webhook_message(sent[i:i + batch]) for i in range(0, len(sent), batch)]
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="heald-scale-") as d:
        tmp = Path(d)
        config = heald_config(tmp, url)
        started = [start_worker(config, tmp, f"w{i + 1}") for i in range(workers)]
        procs = [p for p, _, _ in started]
        try:
            for p, port, log in started:
                wait_up(port, p, log=log)
            urls = [f"http://127.0.0.1:{port}/v1/webhooks/alertmanager" for _, port, _ in started]
            kill = (len(messages) // 2, procs[-1]) if workers > 1 else None
            t0 = time.perf_counter()
            lat, retried, fanned, statuses = send_stream(urls, messages, concurrency, fanout, kill)
            seconds = time.perf_counter() - t0
            load1 = os.getloadavg()[0]
            total, missing, twice = stored_counts(url, sent)
        finally:
            stop(procs)
    return StreamResult(f"heald x{workers}", len(sent), seconds, len(sent) / seconds, pct(lat, 0.5), pct(lat, 0.99),
                        total, missing, twice, len(lat), retried, fanned, f"w{workers}" if workers > 1 else None,
                        load1, statuses)


# -- Debian's Alertmanager -----------------------------------------------------------------------
def run_alertmanager(sent: list[dict[str, Any]], batch: int, concurrency: int) -> StreamResult | None:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="heald-scale-am-") as d:
        tmp = Path(d)
        (tmp / "am.yml").write_text("route: {receiver: none, group_by: [alertname], group_wait: 1h}\n"
                                    "receivers: [{name: none}]\n")
        port = free_port()
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'am.yml'}", f"--storage.path={tmp / 'am'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_up(port, proc, "/-/ready")
            messages = [[{k: a[k] for k in ("labels", "annotations", "startsAt", "endsAt", "generatorURL")}
                         for a in sent[i:i + batch]] for i in range(0, len(sent), batch)]
            t0 = time.perf_counter()
            lat, retried, _, statuses = send_stream([f"http://127.0.0.1:{port}/api/v2/alerts"], messages,
                                                    concurrency, 0)
            seconds = time.perf_counter() - t0
            load1 = os.getloadavg()[0]
            stored = len(httpx.get(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=30).json())
        finally:
            stop([proc])
    distinct = len({json.dumps(a["labels"], sort_keys=True) for a in sent})
    return StreamResult("alertmanager", len(sent), seconds, len(sent) / seconds, pct(lat, 0.5), pct(lat, 0.99),
                        stored, distinct - stored, 0, len(lat), retried, 0, None, load1, statuses)


# -- failover -----------------------------------------------------------------------------------
class _Target:
    """A service answering 500 until the remedy wrote its fix file."""

    def __init__(self, root: Path):
        self.fixes = root / "fixes"
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200 if outer.fixes.exists() else 500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def one_failover() -> dict[str, float]:
    """w1 runs a healing held just after its remedy ran; w2 joins; w1 is SIGKILLed. Returns
    {"recovered_s": kill → w2 re-enqueued w1's workflow, "resolved_s": kill → incident resolved,
    "remedy_runs": how many times the remedy ran}."""
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="heald-scale-fo-") as d:
        tmp = Path(d)
        target = _Target(tmp)
        rb = tmp / "rb.yaml"
        rb.write_text(json.dumps({"runbooks": [{
            "name": "web-down", "match": {"labels": ['service="web"']},
            "diagnosis": {"category": "service_down", "confidence": 0.95, "explanation": "web answers 500"},
            "remedies": [{"remedy": "run_command", "risk": "low", "params": {"name": "fix"}}]}]}))
        fix = f"open({str(target.fixes)!r}, 'a').write('x\\n')"
        config = heald_config(tmp, url, {
            "runbooks": [str(rb)], "policy": {"auto_min_confidence": 0.5, "escalate_below_confidence": 0.3},
            "correlation": {}, "remedies": {"commands": {"fix": {"argv": [sys.executable, "-c", fix]}}},
            "healing": {"group_wait_seconds": 0.05, "stabilization_seconds": 0.5, "verify_interval_seconds": 0.1},
            "services": {"web": {"probes": [{"url": target.url, "interval_seconds": 0.2, "failure_threshold": 2}]}}})
        w1, p1, log1 = start_worker(config, tmp, "w1", "act.after_apply")
        procs = [w1]
        try:
            wait_up(p1, w1, log=log1)
            deadline = time.monotonic() + 120
            while "failpoint act.after_apply reached" not in log1.read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError("w1 never reached its fail point")
                time.sleep(0.1)
            w2, p2, log2 = start_worker(config, tmp, "w2")
            procs.append(w2)
            wait_up(p2, w2, log=log2)
            engine = sa.create_engine(normalize_url(url))
            killed = time.monotonic()
            w1.send_signal(signal.SIGKILL)
            recovered = resolved = None
            while time.monotonic() - killed < 120 and resolved is None:
                with engine.connect() as c:
                    if recovered is None and c.execute(sa.text(
                            "SELECT recovered_by FROM heald_workers WHERE executor_id = 'w1'")).scalar():
                        recovered = time.monotonic() - killed
                    if c.execute(sa.text("SELECT state FROM incidents")).scalar() == "resolved":
                        resolved = time.monotonic() - killed
                time.sleep(0.05)
            engine.dispose()
            runs = len(target.fixes.read_text().splitlines()) if target.fixes.exists() else 0
        finally:
            stop(procs)
            target.server.shutdown()
    return {"recovered_s": recovered if recovered is not None else float("nan"),
            "resolved_s": resolved if resolved is not None else float("nan"), "remedy_runs": runs}


def _median(values: list[float]) -> float | None:
    ok = [v for v in values if v == v]  # NaN: a failover that did not complete
    return statistics.median(ok) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alerts", type=int, default=4000)
    ap.add_argument("--fingerprints", type=int, default=400)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--fanout", type=int, default=10, help="every n-th message goes to two workers (0: none)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--small", action="store_true", help="a quick run: 600 alerts over 60 fingerprints, batch 10")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.small:
        args.alerts, args.fingerprints, args.batch = 600, 60, [10]
    sent = alerts(args.alerts, args.fingerprints)
    rows: list[StreamResult] = []
    for batch in args.batch:
        am = run_alertmanager(sent, batch, args.concurrency)
        if am is not None:
            rows.append(am)
        for n in args.workers:
            rows.append(run_heald(n, sent, batch, args.concurrency, args.fanout))
            print(f"done: {rows[-1].target} batch {batch}: {rows[-1].alerts_per_s:.0f} alerts/s", file=sys.stderr,
                  flush=True)
    failovers: list[dict[str, Any]] = []
    for i in range(args.failovers):
        try:
            failovers.append(one_failover())
        except Exception as exc:  # a worker that could not start (e.g. the server's connection limit): reported
            failovers.append({"recovered_s": float("nan"), "resolved_s": float("nan"), "remedy_runs": -1,
                              "error": str(exc)[-1500:]})
        print(f"done: failover {i + 1}: {failovers[-1]}", file=sys.stderr, flush=True)
    summary = {"alerts": args.alerts, "fingerprints": args.fingerprints, "concurrency": args.concurrency,
               "fanout": args.fanout, "batches": args.batch, "rows": [asdict(r) for r in rows],
               "failovers": failovers,
               "failover_median_resolved_s": _median([f["resolved_s"] for f in failovers]),
               "failover_median_recovered_s": _median([f["recovered_s"] for f in failovers]),
               "loadavg": os.getloadavg()}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.alerts} alerts over {args.fingerprints} fingerprints, concurrency {args.concurrency}, "
          f"every {args.fanout}th message to two workers; with 2+ workers the last is SIGKILLed halfway")
    print(f"{'target':<14}{'batch':>6}{'alerts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'stored':>8}{'lost':>6}{'twice':>7}"
          f"{'retried':>9}{'fan-out':>9}{'load1':>7}")
    per_batch = len(rows) // len(args.batch)
    for i, r in enumerate(rows):
        batch = args.batch[i // per_batch]
        print(f"{r.target:<14}{batch:>6}{r.alerts_per_s:>10.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.stored!s:>8}"
              f"{r.lost!s:>6}{r.twice!s:>7}{r.retried:>9}{r.fanout_messages:>9}{r.load1:>7.1f}")
    print("(alertmanager: 'stored' = active alerts it keeps, one per label set; heald: signals, one per alert sent)")
    for i, f in enumerate(failovers, 1):
        print(f"failover {i}: dead worker claimed and its workflow re-enqueued after {f['recovered_s']:.2f} s, "
              f"healing finished on the other worker after {f['resolved_s']:.2f} s, remedy ran {f['remedy_runs']}x")
    for f in failovers:
        if "error" in f:
            print(f"failover failed: {f['error']}")
    if summary["failover_median_resolved_s"] is not None:
        print(f"failover median of {sum(1 for f in failovers if 'error' not in f)}: recovered "
              f"{summary['failover_median_recovered_s']:.2f} s, resolved {summary['failover_median_resolved_s']:.2f} s "
              f"(heartbeat timeout 3 s, interval 0.5 s); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
