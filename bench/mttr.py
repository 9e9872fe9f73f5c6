"""Time to detect and time to recover of heald on the demo system, per fault, over N runs.

Starts one demo system (``heald demo``'s shop, payments, load generator, heald in this
process), injects every fault N times, and prints per fault the median and p95 of:

- time to detect after the first failing probe (the incident's detection minus the first
  failing observation) and from the injection;
- time to recover after the first failing probe and from the injection (recovered = the start
  of the passing streak verification accepted);

and what Kubernetes' default liveness probe (``periodSeconds: 10``, ``failureThreshold: 3``,
an HTTP GET of the service's /healthz) would have given on the same runs: it sees a fault only
when that run's /healthz probe failed; its first probe after the failure lands at a uniformly
random phase of its 10 s period (seeded, so the column is reproducible), and it restarts after
the third failure: TTD = (first /healthz failure − injection) + phase + 2 × 10 s; a restart
heals only when heald's own healing of that run was a restart, and then TTR = TTD + the
restart's duration measured in that run (remedy start → recovered). A fault that never fails
/healthz, or fails it once (false-alarm), is never acted on by a liveness probe.

Usage::

    .venv/bin/python bench/mttr.py [--runs 5] [--fault NAME ...] [--with-prometheus] [--json]

Targets (issue 3): median time to detect ≤ 1 s after the first failing probe; median time to
recover ≤ 3 s for restarts.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from heald.demo.faults import FAULTS
from heald.demo.runner import DemoResult, run_fault, start_demo
from heald.demo.system import DemoEnv
from heald.log import configure

K8S_PERIOD_S = 10.0
K8S_FAILURES = 3
RESTART_FAULTS = ("process-crash", "dependency-down", "memory-leak")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in 0..1)."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def streak_start(results: list[Any]) -> float:
    """When the final run of failures in ``results`` (time order, the last one failing) began."""
    i = len(results) - 1
    while i > 0 and not results[i - 1].ok:
        i -= 1
    return float(results[i].at.timestamp())


def kubernetes(env: DemoEnv, r: DemoResult, injected_at: float, rng: random.Random) -> dict[str, Any]:
    """The liveness-probe model of the module docstring for one run. /healthz must have been
    failing, without interruption, from its first failure after the injection until heald's
    first remedy (a failure that passed by itself, such as a deploy's restart, would not reach
    three failures 10 s apart)."""
    store = env.runtime.store
    actions = store.actions_for(r.incident_id) if r.incident_id is not None else []
    acted = actions[0].started_at.timestamp() if actions and actions[0].started_at else time.time()
    seen: dict[str, list[Any]] = {}
    for svc, label, res in list(env.history):
        if label.endswith("/healthz") and injected_at <= res.at.timestamp() <= acted:
            seen.setdefault(svc, []).append(res)
    failing = [rs for rs in seen.values() if rs and not rs[-1].ok]
    if not failing:
        why = "/healthz failed only briefly" if any(not x.ok for rs in seen.values() for x in rs) else "/healthz never failed"
        return {"detected": False, "healed": False, "why": why}
    first = min(streak_start(rs) for rs in failing)
    ttd = max(0.0, first - injected_at) + rng.uniform(0, K8S_PERIOD_S) + (K8S_FAILURES - 1) * K8S_PERIOD_S
    inc = store.get_incident(r.incident_id) if r.incident_id is not None else None
    if not actions or actions[-1].remedy != "restart_process" or inc is None or inc.recovered_at is None \
            or actions[-1].started_at is None:
        return {"detected": True, "healed": False, "ttd_s": ttd, "why": "a restart does not remove the cause"}
    restart = max(0.0, (inc.recovered_at - actions[-1].started_at).total_seconds())
    return {"detected": True, "healed": True, "ttd_s": ttd, "ttr_s": ttd + restart}


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the table from the runs of one fault."""
    healed = [x for x in runs if x["expected"]]

    def stat(key: str) -> dict[str, float] | None:
        values = [x[key] for x in healed if x.get(key) is not None]
        return {"median": statistics.median(values), "p95": pct(values, 0.95)} if values else None

    k8s = [x["k8s"] for x in runs]
    k8s_ttd = [k["ttd_s"] for k in k8s if k.get("detected")]
    k8s_ttr = [k["ttr_s"] for k in k8s if k.get("healed")]
    return {"fault": name, "runs": len(runs), "as_expected": len(healed),
            "ttd_after_first_failure_s": stat("incident_time_to_detect_s"), "ttd_from_injection_s": stat("time_to_detect_s"),
            "ttr_after_first_failure_s": stat("incident_time_to_recover_s"), "ttr_from_injection_s": stat("time_to_recover_s"),
            "k8s_liveness": {"detected": len(k8s_ttd), "healed": len(k8s_ttr),
                             "ttd_median_s": statistics.median(k8s_ttd) if k8s_ttd else None,
                             "ttr_median_s": statistics.median(k8s_ttr) if k8s_ttr else None,
                             "why_not": sorted({k["why"] for k in k8s if "why" in k})}}


def fmt(s: dict[str, float] | None) -> str:
    return "—" if s is None else f"{s['median']:.2f} / {s['p95']:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ["fault", "ok", "TTD after 1st fail", "TTD from inject", "TTR after 1st fail", "TTR from inject",
            "k8s liveness TTD / TTR"]
    lines = []
    for r in rows:
        k = r["k8s_liveness"]
        if not k["detected"]:
            k8s = f"never ({', '.join(k['why_not'])})"
        elif not k["healed"]:
            k8s = f"{k['ttd_median_s']:.1f} s / not healed ({', '.join(k['why_not'])})"
        else:
            k8s = f"{k['ttd_median_s']:.1f} s / {k['ttr_median_s']:.1f} s"
        lines.append([r["fault"], f"{r['as_expected']}/{r['runs']}", fmt(r["ttd_after_first_failure_s"]),
                      fmt(r["ttd_from_injection_s"]), fmt(r["ttr_after_first_failure_s"]), fmt(r["ttr_from_injection_s"]), k8s])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def targets(rows: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The issue's two targets, over all runs that went as expected."""
    ttd = [x["incident_time_to_detect_s"] for xs in runs.values() for x in xs
           if x["expected"] and x.get("incident_time_to_detect_s") is not None]
    ttr = [x["incident_time_to_recover_s"] for name in RESTART_FAULTS for x in runs.get(name, [])
           if x["expected"] and x.get("incident_time_to_recover_s") is not None]
    ttr_inj = [x["time_to_recover_s"] for name in RESTART_FAULTS for x in runs.get(name, [])
               if x["expected"] and x.get("time_to_recover_s") is not None]
    return {"median_ttd_after_first_failure_s": statistics.median(ttd) if ttd else None, "ttd_target_s": 1.0,
            "median_restart_ttr_after_first_failure_s": statistics.median(ttr) if ttr else None,
            "median_restart_ttr_from_injection_s": statistics.median(ttr_inj) if ttr_inj else None,
            "ttr_target_s": 3.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each fault (default 5)")
    ap.add_argument("--fault", action="append", choices=list(FAULTS), help="only this fault (repeatable)")
    ap.add_argument("--with-prometheus", action="store_true", help="detect metric faults through Prometheus + Alertmanager")
    ap.add_argument("--seed", type=int, default=3, help="seed of the liveness-probe phases")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    configure("warning")
    names = args.fault or list(FAULTS)
    console = Console(stderr=True)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="heald-bench-mttr-"))
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    started = time.monotonic()
    env = start_demo(work / "demo", with_prometheus=args.with_prometheus)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("injecting faults", total=len(names) * args.runs)
            for i in range(args.runs):
                for name in names:
                    progress.update(task, description=f"run {i + 1}/{args.runs}: {name}")
                    r = run_fault(env, FAULTS[name], lambda _m: None, timeout=90)
                    row = {**r.__dict__, "k8s": kubernetes(env, r, r.injected_at, rng)}
                    runs[name].append(row)
                    if not r.expected:
                        console.print(f"[red]{name} run {i + 1}: {r.outcome}: {r.reason} {r.problems}[/]")
                    progress.advance(task)
    finally:
        env.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = [summarize(n, runs[n]) for n in names]
    goal = targets(rows, runs)
    report = {"runs_per_fault": args.runs, "with_prometheus": args.with_prometheus,
              "wall_seconds": round(time.monotonic() - started, 1), "faults": rows, "targets": goal}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"heald demo faults, {args.runs} runs each ({'Prometheus + Alertmanager' if args.with_prometheus else 'heald probes'}); "
              f"median / p95 in seconds, over the runs healed as expected")
        print(table(rows))
        ttd, ttr = goal["median_ttd_after_first_failure_s"], goal["median_restart_ttr_after_first_failure_s"]
        print(f"\nmedian time to detect after the first failing probe: {ttd:.2f} s (target ≤ 1 s)" if ttd is not None else "")
        if ttr is not None:
            print(f"median time to recover for restarts ({', '.join(n for n in RESTART_FAULTS if n in names)}): "
                  f"{ttr:.2f} s after the first failing probe, {goal['median_restart_ttr_from_injection_s']:.2f} s "
                  f"from the injection (target ≤ 3 s)")
        print(f"wall time {report['wall_seconds']} s")
    return 0 if all(r["as_expected"] == r["runs"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
