"""The demo's users: a load generator for the shop, run as a process of its own.

``python -m heald.demo.traffic --base URL [--rps 20] [--workers 6]``: each worker loops over
``GET /products`` (60%) and ``POST /checkout`` (40%), paced so that all together send about
``rps`` requests per second, each with a 12 s timeout; failures are the point and are ignored.
Runs until terminated.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request


def worker(base: str, interval: float, stop: threading.Event) -> None:
    next_at = time.monotonic() + random.uniform(0, interval)
    while not stop.is_set():
        stop.wait(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + interval, time.monotonic())
        if random.random() < 0.6:
            req = urllib.request.Request(f"{base}/products")
        else:
            req = urllib.request.Request(f"{base}/checkout", method="POST",
                                         data=json.dumps({"product_id": random.randint(1, 3)}).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=12) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="heald.demo.traffic")
    p.add_argument("--base", required=True)
    p.add_argument("--rps", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=6)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=worker, args=(args.base.rstrip("/"), args.workers / args.rps, stop), daemon=True)
               for _ in range(args.workers)]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
