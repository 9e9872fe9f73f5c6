"""The demo payments service the shop calls on checkout.

``python -m heald.demo.payments --port PORT [--starts-file FILE]``. Routes: ``GET /healthz``,
``POST /charge`` (``{"amount", "currency"}`` → ``{"charge_id", "status": "approved"}``),
``GET /metrics`` (``payments_charges_total``). Each start appends ``<pid> <epoch>`` to the starts
file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

CHARGES = Counter("payments_charges_total", "Charges by status", ["status"])


class Handler(BaseHTTPRequestHandler):
    server_version = "heald-demo-payments/1"

    def _send(self, status: int, body: object, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            self._send(200, {"status": "ok", "pid": os.getpid()})
        elif self.path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        else:
            self._send(404, {"error": "NOT_FOUND"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/charge":
            self._send(404, {"error": "NOT_FOUND"})
            return
        try:
            order = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            amount = float(order["amount"])
        except (ValueError, KeyError, TypeError):
            CHARGES.labels("rejected").inc()
            self._send(400, {"error": "BAD_CHARGE", "detail": "expected {\"amount\": number, \"currency\": code}"})
            return
        CHARGES.labels("approved").inc()
        self._send(200, {"charge_id": uuid.uuid4().hex[:12], "status": "approved", "amount": amount})

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="heald.demo.payments")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--starts-file", type=Path)
    args = p.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if args.starts_file:
        with open(args.starts_file, "a") as f:
            f.write(f"{os.getpid()} {time.time():.3f}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
