"""CPU per HTTP probe: a new httpx client per probe (before issue 19) against one shared client
(:func:`heald.sources.probes.probe_client`, what a probe runner and verification use now).

Starts a loopback HTTP server in a thread, runs ``-n`` HTTP probes each way through
:func:`heald.sources.probes.run_probe` and prints the process CPU time per probe in
milliseconds (the server thread's share included, the same in both).

Usage::

    .venv/bin/python bench/probe_cost.py [-n 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from heald.config import ProbeConfig
from heald.sources.probes import ProbeResult, probe_client, run_probe


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def cpu_ms_per_probe(fn: Callable[[], ProbeResult], n: int) -> float:
    """Process CPU milliseconds per call of ``fn`` over ``n`` calls (after one warm-up)."""
    assert fn().ok
    t = time.process_time()
    for _ in range(n):
        assert fn().ok
    return (time.process_time() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="probes per way")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = ProbeConfig(url=f"http://127.0.0.1:{server.server_address[1]}/healthz", timeout_seconds=2)
    try:
        own = cpu_ms_per_probe(lambda: run_probe(probe, "bench"), args.n)
        with probe_client() as client:
            shared = cpu_ms_per_probe(lambda: run_probe(probe, "bench", http=client), args.n)
    finally:
        server.shutdown()
        server.server_close()
    result = {"probes": args.n, "client_per_probe_cpu_ms": own, "shared_client_cpu_ms": shared,
              "loadavg_1m": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'HTTP probe':<28}{'CPU ms per probe':>18}")
    print(f"{'a new client per probe':<28}{own:>18.2f}")
    print(f"{'one shared client':<28}{shared:>18.2f}")
    print(f"({args.n} probes each; load average {result['loadavg_1m']:.2f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
