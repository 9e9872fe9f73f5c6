"""The time of one ``GET /metrics`` scrape's work as the history grows (issue 19): the store
seeded as ``bench/growth.py`` seeds it (N incidents, N signals, about 2N audit entries), then
heald's own registry rendered (prometheus-client's ``generate_latest``, what ``/metrics``
serves) ``--reps`` times after a first, warming scrape; median and max in ms, per size, with
the 1-minute load average. Beside it, the two figures that are tallied (signals by source,
escalations): read over the whole history, as every scrape did before, and from a settled
tally, as a scrape does now (median ms).

Run: ``.venv/bin/python bench/metrics_scrape.py [--sizes 10000 100000] [--reps 20]``
(SQLite files in a temporary directory; ``--json`` for the figures as JSON)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from growth import seed


def run_size(n: int, reps: int, work: Path) -> dict[str, Any]:
    """Seed a store of size ``n`` and time ``reps`` renderings of its registry (ms)."""
    from prometheus_client import generate_latest

    from heald.api.metrics import SETTLE_SECONDS, StoreCollector, registry_for
    from heald.store import Store

    url = f"sqlite:///{work / f'n{n}.db'}"
    counts = seed(url, n)
    registry = registry_for(Store(url))
    t = time.perf_counter()
    first = generate_latest(registry).decode()
    first_ms = (time.perf_counter() - t) * 1000
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - t) * 1000)
    store = Store(url)
    history_ms = _median_ms(lambda: (store.count_signals_by_source(), store.count_escalations()), reps)
    now = [0.0]
    collector = StoreCollector(store, clock=lambda: now[0])
    collector.signals.totals(), collector.escalations.totals()
    now[0] = SETTLE_SECONDS + 1  # the history settles below the mark
    tally_ms = _median_ms(lambda: (collector.signals.totals(), collector.escalations.totals()), reps)
    figures = [line for line in first.splitlines()
               if line.startswith(("heald_signals_received_total", "heald_escalations_total"))]
    return {"n": n, **counts, "first_ms": first_ms, "median_ms": statistics.median(times), "max_ms": max(times),
            "tallied_history_ms": history_ms, "tallied_settled_ms": tally_ms, "figures": figures,
            "loadavg_1m": os.getloadavg()[0]}


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="heald-metrics-") as tmp:
        for n in args.sizes:
            results.append(run_size(n, args.reps, Path(tmp)))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'':>9} {'whole scrape':^32} {'signals + escalations':^25}")
    print(f"{'N':>9} {'first ms':>10} {'median ms':>10} {'max ms':>10} {'history ms':>12} {'tally ms':>12} "
          f"{'load 1m':>8}  figures")
    for r in results:
        print(f"{r['n']:>9,} {r['first_ms']:>10.1f} {r['median_ms']:>10.1f} {r['max_ms']:>10.1f} "
              f"{r['tallied_history_ms']:>12.1f} {r['tallied_settled_ms']:>12.2f} {r['loadavg_1m']:>8.2f}  "
              f"{'; '.join(r['figures'])}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
