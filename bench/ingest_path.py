"""The ingest path alone, in one process: Alertmanager webhook messages parsed and stored by a
real :class:`heald.engine.Runtime` on a SQLite file (``Runtime.ingest_many``, as the webhook
route calls it), without HTTP and with the healings held back by a one-hour group_wait (they
are enqueued, DELAYED, and counted, but none runs), so that what is measured is what storing
and correlating alerts costs. ``--baseline DIR`` runs the same in a child process on another
checkout's ``src`` (e.g. a ``git worktree`` of an older commit) first, for a ratio in the same
run.

Printed per phase (``opening``: every alert opens an incident; ``duplicates``: each joins its
fingerprint's open incident), for the checkout and the baseline: alerts/s until every message
was answered, alerts/s until every healing was also enqueued, CPU ms per alert (the process's
user + system time), and the 1-minute load average.

Usage::

    .venv/bin/python bench/ingest_path.py [--fingerprints 2000] [--batch 100] [--duplicates 2]
        [--baseline /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import _alert, _heald_body  # the same alerts as bench/ingest.py


def measure(fingerprints: int, batch: int, duplicates: int) -> list[dict[str, Any]]:
    """Both phases in this process; returns one row per phase."""
    from heald.config import HealdConfig
    from heald.engine import Runtime
    from heald.log import configure
    from heald.sources import WEBHOOK_SOURCES

    configure("warning")
    state = Path(tempfile.mkdtemp(prefix="heald-ingest-path-"))
    cfg = HealdConfig.model_validate({"state_dir": str(state), "database_url": f"sqlite:///{state}/heald.db",
                                      "healing": {"group_wait_seconds": 3600}})
    cfg.resolve_paths(state)
    rt = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.start()
    plugin = WEBHOOK_SOURCES["alertmanager"]
    alerts = [_alert("p", k) for k in range(fingerprints)]
    bodies = [_heald_body(alerts[i:i + batch]) for i in range(0, fingerprints, batch)]
    rows = []
    try:
        for phase, rounds in (("opening", 1), ("duplicates", duplicates)):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(rounds):
                for body in bodies:
                    rt.ingest_many(plugin.parse({}, body), "source:alertmanager")
            answered = time.perf_counter() - t0
            dispatcher = getattr(rt, "dispatcher", None)
            if dispatcher is not None:
                dispatcher.wait_idle(300)  # the healings' enqueueing is part of the cost
            done, cpu = time.perf_counter() - t0, time.process_time() - c0
            n = fingerprints * rounds
            rows.append({"phase": phase, "alerts": n, "answered_per_s": round(n / answered, 1),
                         "enqueued_per_s": round(n / done, 1), "cpu_ms_per_alert": round(cpu * 1000 / n, 3),
                         "load1": round(os.getloadavg()[0], 2)})
    finally:
        rt.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fingerprints", type=int, default=2000, help="alerts per phase round (2000)")
    p.add_argument("--batch", type=int, default=100, help="alerts per message (100)")
    p.add_argument("--duplicates", type=int, default=2, help="rounds of duplicates (2)")
    p.add_argument("--baseline", type=Path, help="another checkout (its src/ is put first on the path)")
    p.add_argument("--json-rows", action="store_true", help=argparse.SUPPRESS)  # a child's run
    a = p.parse_args(argv)
    if a.json_rows:
        print(json.dumps(measure(a.fingerprints, a.batch, a.duplicates)))
        return 0
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for label, src in ([("baseline", a.baseline / "src")] if a.baseline else []) + [("this", None)]:
        env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
        out = subprocess.run([sys.executable, __file__, "--json-rows", "--fingerprints", str(a.fingerprints),
                              "--batch", str(a.batch), "--duplicates", str(a.duplicates)],
                             env=env, capture_output=True, text=True, check=True)
        runs.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{'checkout':10} {'phase':11} {'alerts':>7} {'answered/s':>11} {'enqueued/s':>11} {'cpu ms/al':>10} {'load1':>6}")
    for label, rows in runs:
        for r in rows:
            print(f"{label:10} {r['phase']:11} {r['alerts']:7d} {r['answered_per_s']:11.1f} {r['enqueued_per_s']:11.1f} "
                  f"{r['cpu_ms_per_alert']:10.3f} {r['load1']:6.2f}")
    if a.baseline:
        for (_, base), (_, this) in [(runs[0], runs[1])]:
            for b, t in zip(base, this, strict=True):
                print(f"{t['phase']}: {t['answered_per_s'] / b['answered_per_s']:.2f}x answered/s, "
                      f"{b['cpu_ms_per_alert'] / t['cpu_ms_per_alert']:.2f}x less CPU per alert")
    return 0


if __name__ == "__main__":
    sys.exit(main())
