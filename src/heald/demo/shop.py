"""The demo shop: a small HTTP service heald supervises in ``heald demo``.

``python -m heald.demo.shop --port PORT [--starts-file FILE]``. Routes: ``GET /healthz``
(200 when healthy), ``GET /products`` (a JSON list). Each start appends ``<pid> <epoch>`` to the
starts file, so a test can count how often the service was (re)started.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PRODUCTS = [{"id": 1, "name": "teapot", "price": 18.5}, {"id": 2, "name": "kettle", "price": 31.0}]


class Handler(BaseHTTPRequestHandler):
    server_version = "heald-demo-shop/1"

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            self._send(200, {"status": "ok", "pid": os.getpid()})
        elif self.path == "/products":
            self._send(200, PRODUCTS)
        else:
            self._send(404, {"error": "NOT_FOUND"})

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="heald.demo.shop")
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
