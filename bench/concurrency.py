"""Many simultaneous incidents: do they all end, how long it takes, and what heald spends on
each healing outside the remedy and the verification window.

For each database (a SQLite file; a fresh PostgreSQL database on ``$HEALD_TEST_POSTGRES_URL``)
and each size N, one real heald runtime in a fresh child process (DBOS is one per process)
manages N services — ``sleep 600`` processes, each with a ``process`` probe that verification
uses — and serves its HTTP API on loopback. Every service's process is killed (SIGKILL), then
N signals (``POST /v1/signals``, one firing ``ServiceDown`` alert per service) are sent at once
by 16 client threads; a runbook restarts the service (``restart_process``, low
risk: the gate applies it without approval) and verification waits for the process probe to
pass for ``stabilization_seconds``. The script waits (at most ``--timeout`` seconds) for every
incident to end and prints per run:

- the time from the first message until every incident ended, and how many ended (resolved /
  other states; none may be left open);
- the HTTP answers (5xx must be 0);
- the healing overhead per incident: the workflow's wall time minus the group wait, the
  remedy's own ``apply`` and the verification's polling window, split by stage (median and
  p95 over the incidents, in ms): ``diagnose``, ``plan+decide`` (with the target's lease since
  issue 19; ``lease`` was a step of its own before), ``act`` (without the remedy), ``verify``
  (without the window), ``finish`` (learn, breaker, close) and ``checkpoints`` (the workflow's
  own time between steps: DBOS's records, the group-wait lookup); the stage
  names follow the DBOS steps (a step an older heald records under another name is counted
  under its stage). Wall times grow with the machine's load; ``CPU ms`` is the CPU time of the
  workflow's thread over the same span (``time.thread_time``, per stage in the JSON), which
  does not;
- the DBOS steps and the store's write transactions per healing;
- peak RSS (MB) and peak thread count of the heald process.

Size 1 measures the overhead without contention (issue 19: ≤ 20 ms).

Usage::

    .venv/bin/python bench/concurrency.py [--sizes 1,50,200] [--db sqlite,postgresql] [--timeout 600] [--json]
    .venv/bin/python bench/concurrency.py --small      # smoke test: sizes 1,5 on both databases
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

#: DBOS step name → the stage it belongs to (steps recorded by older heald versions included).
STAGES: dict[str, str] = {
    "reproduce_step": "diagnose", "diagnose_step": "diagnose",
    "plan_step": "plan+decide", "decide_step": "plan+decide", "plan_decide_step": "plan+decide",
    "now_step": "lease", "lease_step": "lease",
    "act_step": "act", "verify_step": "verify",
    "learn_step": "finish", "breaker_step": "finish", "close_step": "finish", "finish_step": "finish",
}
STAGE_ORDER = ["diagnose", "plan+decide", "lease", "act", "verify", "finish", "checkpoints"]
SENDERS = 16
#: A service healed once before the measured run (imports and caches warm), left out of the figures.
WARMUP = "warmup"

RUNBOOK = """
runbooks:
  - name: service-down
    match:
      labels: ['alertname="ServiceDown"']
    diagnosis: {category: process_down, confidence: 0.95, explanation: "the service's process is gone"}
    remedies:
      - {remedy: restart_process, risk: low, params: {service: "${service}"}}
"""


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in 0..1); 0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(q * len(s) + 0.999999) - 1))]


def proc_status() -> dict[str, int]:
    """This process's ``VmRSS``/``VmHWM`` (kB) and ``Threads`` from /proc/self/status (Linux)."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def signal_body(service: str) -> dict[str, Any]:
    """One firing signal about ``service`` in heald's generic schema (``POST /v1/signals``; a
    source that sends no "resolved", so verification is the service's probe alone)."""
    return {"source": "bench", "kind": "alert", "service": service, "severity": "critical",
            "summary": f"{service} is down", "labels": {"alertname": "ServiceDown", "service": service}}


def run_one(db: str, size: int, database_url: str | None, work: Path, timeout: float) -> dict[str, Any]:
    """One run in this process: ``size`` simultaneous incidents on ``db`` (see the module
    docstring); returns its figures."""
    import httpx
    import uvicorn
    import yaml
    from dbos import DBOS

    from heald.api.app import create_app
    from heald.auth import issue_token
    from heald.config import HealdConfig
    from heald.demo.runner import free_port
    from heald.engine import Runtime, steps, workflow_id
    from heald.log import configure
    from heald.models import Role
    from heald.remedies.process import RestartProcess
    from heald.store import Store

    configure("error")
    state = work / "state"
    runbooks = work / "runbooks.yaml"
    runbooks.write_text(RUNBOOK)
    names = [f"svc{i:03d}" for i in range(size)]
    data: dict[str, Any] = {
        "state_dir": str(state), "runbooks": [str(runbooks)], "log_level": "error",
        "services": {n: {"command": ["sleep", "600"],
                         "probes": [{"type": "process", "interval_seconds": 0.2, "failure_threshold": 1}]}
                     for n in [*names, WARMUP]},
        "healing": {"group_wait_seconds": 0.1, "stabilization_seconds": 0.3, "verify_interval_seconds": 0.05,
                    "verify_timeout_seconds": 30.0, "retry_delay_seconds": 0.2},
        "policy": {"budgets": {"rate_limit_global": {"max_actions": 100_000, "window_seconds": 3600}}},
    }
    if database_url:
        data["database_url"] = database_url
    (work / "heald.yaml").write_text(yaml.safe_dump(data))
    cfg = HealdConfig.model_validate(data)
    cfg.resolve_paths(work)

    # what the overhead excludes: the remedy's apply and the verification's polling window, per incident
    spent: dict[int, dict[str, float]] = defaultdict(lambda: {"apply": 0.0, "window": 0.0, "apply_cpu": 0.0,
                                                              "window_cpu": 0.0})
    # CPU time of the workflow's thread (time.thread_time): from the first stage after the group
    # wait to the end of the last, and per stage; a loaded machine inflates wall times, not these
    cpu: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    apply, verify_recovery = RestartProcess.apply, steps.verify_recovery

    def timed_apply(self: Any, params: Any, ctx: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return apply(self, params, ctx)
        finally:
            spent[ctx.incident.id]["apply"] += time.perf_counter() - t0
            spent[ctx.incident.id]["apply_cpu"] += time.thread_time() - c0

    def timed_verify(incident_id: int, *args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return verify_recovery(incident_id, *args, **kwargs)
        finally:
            spent[incident_id]["window"] += time.perf_counter() - t0
            spent[incident_id]["window_cpu"] += time.thread_time() - c0

    nested = threading.local()  # a stage called by another (plan_and_decide → plan) counts for its caller

    def cpu_of(stage: str, fn: Any, first: bool = False, last: bool = False) -> Any:
        def wrapper(deps: Any, incident_id: int, *args: Any, **kwargs: Any) -> Any:
            if getattr(nested, "depth", 0):
                return fn(deps, incident_id, *args, **kwargs)
            nested.depth = 1
            c0 = time.thread_time()
            if first and "start" not in cpu[incident_id]:
                cpu[incident_id]["start"] = c0
            try:
                return fn(deps, incident_id, *args, **kwargs)
            finally:
                nested.depth = 0
                c1 = time.thread_time()
                cpu[incident_id][stage] += c1 - c0
                if last:
                    cpu[incident_id]["end"] = c1
        return wrapper

    patched = [(steps, n, getattr(steps, n)) for n in dir(steps) if not n.startswith("_")]
    patched += [(RestartProcess, "apply", RestartProcess.apply), (Store, "tx", Store.tx)]
    for name, stage in (("reproduce", "diagnose"), ("diagnose", "diagnose"), ("plan", "plan+decide"),
                        ("decide", "plan+decide"), ("plan_and_decide", "plan+decide"), ("take_lease", "lease"),
                        ("act", "act"), ("verify", "verify"), ("learn", "finish"), ("record_breaker", "finish"),
                        ("close", "finish"), ("finish", "finish")):
        if hasattr(steps, name):  # the stage functions of this heald (older ones had others)
            setattr(steps, name, cpu_of(stage, getattr(steps, name), first=name == "reproduce",
                                        last=name in ("close", "finish")))

    RestartProcess.apply = timed_apply  # type: ignore[method-assign]
    steps.verify_recovery = timed_verify  # type: ignore[assignment]

    # count the store's write transactions: one per outermost Store.tx (a Store.tx opened inside
    # an open write transaction of the same thread joins it, since issue 19: not one more)
    tx_count = [0]
    tx = Store.tx

    def counted_tx(self: Any) -> Any:
        current = getattr(self, "_open", None)
        joined = current is not None and (open_now := current.get()) is not None and open_now[1]
        if not joined:
            tx_count[0] += 1
        return tx(self)

    Store.tx = counted_tx  # type: ignore[method-assign]

    peak = {"rss_kb": 0, "threads": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            st = proc_status()
            peak["rss_kb"] = max(peak["rss_kb"], st.get("VmRSS", 0))
            peak["threads"] = max(peak["threads"], st.get("Threads", 0))

    rt = Runtime(cfg, manage_services=True, run_probes=False, tail_logs=False)
    rt.start()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=free_port(), log_level="critical"))
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        _, token = issue_token(rt.store, name="bench", role=Role.operator, created_by="bench", sponsor=None)

        def kill(service: str) -> None:
            ident = rt.supervisor.get(service).identity()
            if ident is not None:
                os.killpg(ident.pid, signal.SIGKILL)

        kill(WARMUP)
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            warm = client.post("/v1/signals", json=signal_body(WARMUP)).json()["incident_id"]
        while time.monotonic() < deadline + timeout and not rt.store.get_incident(warm).state.terminal:
            time.sleep(0.1)
        for n in names:  # the fault: every service's process is gone
            kill(n)
        time.sleep(0.2)
        tx_before = tx_count[0]
        base = f"http://127.0.0.1:{server.config.port}"
        todo = list(names)
        lock = threading.Lock()

        def sender() -> None:
            with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
                while True:
                    with lock:
                        if not todo:
                            return
                        svc = todo.pop()
                    try:
                        code = str(client.post("/v1/signals", json=signal_body(svc)).status_code)
                    except httpx.HTTPError as exc:
                        code = type(exc).__name__
                    with lock:
                        statuses[code] += 1

        started = time.monotonic()
        senders = [threading.Thread(target=sender) for _ in range(min(SENDERS, size))]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        sent_s = time.monotonic() - started
        end = started + timeout
        incidents: list[Any] = []
        while time.monotonic() < end:
            incidents = [i for i in rt.store.list_incidents(limit=10_000) if i.service != WARMUP]
            if len(incidents) >= size and all(i.state.terminal for i in incidents):
                break
            time.sleep(0.25)
        all_end_s = time.monotonic() - started
        ended = [i for i in incidents if i.state.terminal]
        by_state = Counter(i.state.value for i in incidents)
        why_not: Counter[str] = Counter()  # what kept the others from healing
        for i in incidents:
            if i.state.value != "resolved":
                last = rt.store.search_audit(incident_id=i.id, event="incident.transition", limit=1)
                why_not[(i.closed_reason or (last[0].reason if last else "") or "?")[:160]] += 1
        writes = tx_count[0] - tx_before

        stage_ms: dict[str, list[float]] = defaultdict(list)
        cpu_stage_ms: dict[str, list[float]] = defaultdict(list)
        cpu_total_ms: list[float] = []
        total_ms: list[float] = []
        step_counts: list[int] = []
        wf_states: Counter[str] = Counter()
        for inc in incidents:
            status = DBOS.get_workflow_status(workflow_id(inc.id))
            wf_states[status.status if status else "none"] += 1
            if not inc.state.terminal or status is None or status.status != "SUCCESS":
                continue
            recorded = DBOS.list_workflow_steps(workflow_id(inc.id))
            per: dict[str, float] = defaultdict(float)
            in_steps = slept = 0.0
            for s in recorded:
                if s.get("started_at_epoch_ms") is None or s.get("completed_at_epoch_ms") is None:
                    continue
                ms = float(s["completed_at_epoch_ms"] - s["started_at_epoch_ms"])
                name = s["function_name"]
                if name == "DBOS.sleep":  # the group wait: outside the span measured below
                    slept += ms
                    continue
                in_steps += ms
                per[STAGES.get(name, name)] += ms
            c = cpu[inc.id]
            c["act"] -= spent[inc.id]["apply_cpu"]
            c["verify"] -= spent[inc.id]["window_cpu"]
            staged = {k: v for k, v in c.items() if k not in ("start", "end")}
            if "end" in c and "start" in c:
                staged["checkpoints"] = max(0.0, c["end"] - c["start"] - spent[inc.id]["apply_cpu"]
                                            - spent[inc.id]["window_cpu"] - sum(staged.values()))
                for k, v in staged.items():
                    cpu_stage_ms[k].append(1000 * v)
                cpu_total_ms.append(1000 * sum(staged.values()))
            per["act"] = per.get("act", 0.0) - 1000 * spent[inc.id]["apply"]
            per["verify"] = per.get("verify", 0.0) - 1000 * spent[inc.id]["window"]
            # from the first step after the group wait (a DBOS.sleep records its step as it begins)
            timed = [s for s in recorded if s.get("started_at_epoch_ms") is not None
                     and s.get("completed_at_epoch_ms") is not None and s["function_name"] != "DBOS.sleep"]
            wall = float(max(s["completed_at_epoch_ms"] for s in timed) - min(s["started_at_epoch_ms"] for s in timed))
            per["checkpoints"] = max(0.0, wall - in_steps)
            for k, v in per.items():
                stage_ms[k].append(v)
            total_ms.append(sum(per.values()))
            step_counts.append(len(recorded))
        return {
            "db": db, "size": size, "sent_s": round(sent_s, 2), "all_end_s": round(all_end_s, 2),
            "incidents": len(incidents), "ended": len(ended), "by_state": dict(by_state),
            "not_resolved": dict(why_not.most_common(5)),
            "workflows": dict(wf_states), "http": dict(statuses),
            "server_errors": sum(n for c, n in statuses.items() if not c.startswith(("2", "4"))),
            "overhead_ms": {"median": round(statistics.median(total_ms), 1) if total_ms else None,
                            "p95": round(pct(total_ms, 0.95), 1) if total_ms else None},
            "stages_ms": {k: {"median": round(statistics.median(v), 1), "p95": round(pct(v, 0.95), 1)}
                          for k, v in sorted(stage_ms.items(), key=lambda kv: STAGE_ORDER.index(kv[0])
                                             if kv[0] in STAGE_ORDER else 99)},
            "cpu_ms": {"median": round(statistics.median(cpu_total_ms), 1) if cpu_total_ms else None,
                       "p95": round(pct(cpu_total_ms, 0.95), 1) if cpu_total_ms else None},
            "cpu_stages_ms": {k: round(statistics.median(v), 1) for k, v in sorted(
                cpu_stage_ms.items(), key=lambda kv: STAGE_ORDER.index(kv[0]) if kv[0] in STAGE_ORDER else 99)},
            "dbos_steps_per_healing": statistics.median(step_counts) if step_counts else None,
            "store_writes_per_healing": round(writes / max(1, len(incidents)), 1),
            "peak_rss_mb": round(peak["rss_kb"] / 1024, 1), "peak_threads": peak["threads"],
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        sampling.set()
        server.should_exit = True
        server_thread.join(timeout=10)
        rt.stop(stop_services=True)
        for owner, name, value in patched:  # as it was (a test runs this in its own process)
            setattr(owner, name, value)


def _pg_database(server: str) -> tuple[str, Any]:
    import sqlalchemy as sa

    from heald.store.db import normalize_url

    admin = sa.create_engine(normalize_url(server), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"heald_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(normalize_url(server)).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return url, drop


def child(db: str, size: int, timeout: float) -> dict[str, Any]:
    """Run one (database, size) in a child process (DBOS is one per process, and peak RSS and
    threads are the child's own); returns its JSON result or an ``error``."""
    cmd = [sys.executable, __file__, "--one", db, str(size), "--timeout", str(timeout)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 240)
    except subprocess.TimeoutExpired:
        return {"db": db, "size": size, "error": "the run did not finish"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"db": db, "size": size, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def table(rows: list[dict[str, Any]]) -> str:
    head = ["db", "N", "all end (s)", "ended", "states", "5xx", "overhead ms (med / p95)", "CPU ms (med)",
            *[f"{s} (med)" for s in STAGE_ORDER], "steps", "writes", "RSS MB", "threads"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["db"], str(r["size"]), "error: " + r["error"], *[""] * (len(head) - 3)])
            continue
        st = r["stages_ms"]
        lines.append([r["db"], str(r["size"]), f"{r['all_end_s']:.1f}", f"{r['ended']}/{r['size']}",
                      " ".join(f"{k}:{v}" for k, v in sorted(r["by_state"].items())), str(r["server_errors"]),
                      f"{r['overhead_ms']['median']} / {r['overhead_ms']['p95']}", str(r["cpu_ms"]["median"]),
                      *[f"{st[s]['median']}" if s in st else "—" for s in STAGE_ORDER],
                      str(r["dbos_steps_per_healing"]), str(r["store_writes_per_healing"]),
                      f"{r['peak_rss_mb']:.0f}", str(r["peak_threads"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,50,200", help="simultaneous incidents per run, comma-separated")
    ap.add_argument("--db", default="sqlite,postgresql", help="databases: sqlite, postgresql")
    ap.add_argument("--small", action="store_true", help="smoke test: sizes 1,5")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a run waits for every incident to end")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--json-file", type=Path, help="also write the JSON to this file")
    ap.add_argument("--one", nargs=2, metavar=("DB", "SIZE"), help=argparse.SUPPRESS)  # a child's run
    args = ap.parse_args()
    if args.one:
        db, size = args.one[0], int(args.one[1])
        with tempfile.TemporaryDirectory(prefix="heald-bench-conc-") as tmp:
            drop = None
            url = None
            if db == "postgresql":
                url, drop = _pg_database(os.environ.get("HEALD_TEST_POSTGRES_URL",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
            try:
                result = run_one(db, size, url, Path(tmp), args.timeout)
            finally:
                if drop is not None:
                    drop()
        print(json.dumps(result), flush=True)
        os._exit(0)  # a workflow thread left in a DBOS wait must not hold the exit
    sizes = [1, 5] if args.small else [int(s) for s in args.sizes.split(",") if s.strip()]
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    rows = []
    for db in dbs:
        for size in sizes:
            if not args.json:
                print(f"running {db} × {size} …", file=sys.stderr, flush=True)
            rows.append(child(db, size, args.timeout))
    report = json.dumps({"runs": rows, "load_avg": os.getloadavg()}, indent=2)
    if args.json_file:
        args.json_file.write_text(report)
    if args.json:
        print(report)
    else:
        print(f"simultaneous incidents on distinct managed services (restart_process, process probe); "
              f"{SENDERS} webhook senders; overhead = workflow wall time − group wait − remedy apply − "
              f"verification window, ms per incident")
        print(table(rows))
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if all("error" not in r and r["ended"] == r["size"] and r["server_errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
