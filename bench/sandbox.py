"""Start overhead of heald's sandbox against a plain subprocess.

Runs the same command N times plainly (``subprocess.run``) and N times in the sandbox
(``heald.sandbox``: bubblewrap here, with every isolation flag and limit heald uses), interleaved
so that both see the same machine load, and prints the median and p95 wall time of each and the
median overhead. Usage::

    .venv/bin/python bench/sandbox.py [--runs 200] [--command /bin/true] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heald.config import SandboxConfig
from heald.sandbox import open_sandbox
from heald.sandbox.disk import release_under


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="runs of each kind (default 200)")
    ap.add_argument("--command", nargs="+", default=None,
                    help="command to run (default: /bin/true, then python3 -c pass)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    commands = [args.command] if args.command else [["/bin/true"], ["/usr/bin/python3", "-c", "pass"]]
    sb = open_sandbox(SandboxConfig())
    work = Path(tempfile.mkdtemp(prefix="heald-bench-sandbox-"))
    work.chmod(0o755)
    rows = []
    try:
        for cmd in commands:
            plain: list[float] = []
            boxed: list[float] = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, check=True)
                plain.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = sb.run(cmd, workdir=work)
                boxed.append(time.perf_counter() - t0)
                if not r.ok:
                    print(f"sandboxed run failed: {r.describe()}\n{r.output}", file=sys.stderr)
                    return 1
            rows.append({"command": " ".join(cmd), "backend": sb.name, "runs": args.runs,
                         "plain_median_ms": statistics.median(plain) * 1000, "plain_p95_ms": pct(plain, 0.95) * 1000,
                         "sandbox_median_ms": statistics.median(boxed) * 1000, "sandbox_p95_ms": pct(boxed, 0.95) * 1000,
                         "overhead_median_ms": (statistics.median(boxed) - statistics.median(plain)) * 1000})
    finally:
        release_under(work)  # the work tree's own filesystem (heald as root)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (f"{'command':28} {'backend':11} {'runs':>5} {'plain med':>10} {'plain p95':>10} {'sandbox med':>12} "
            f"{'sandbox p95':>12} {'overhead med':>13}")
    print(head)
    for r in rows:
        print(f"{r['command']:28} {r['backend']:11} {r['runs']:>5} {r['plain_median_ms']:>8.2f}ms {r['plain_p95_ms']:>8.2f}ms "
              f"{r['sandbox_median_ms']:>10.2f}ms {r['sandbox_p95_ms']:>10.2f}ms {r['overhead_median_ms']:>11.2f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
