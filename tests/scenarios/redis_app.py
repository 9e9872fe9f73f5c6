"""A small HTTP app that needs redis, for the dependency scenario: ``GET /`` answers 200 with
redis' PONG, or 503 when redis does not answer; ``GET /healthz`` is 200 while the process
runs. It stands for the application nginx proxies to (nginx → app → redis).

Run: ``python redis_app.py --port P --redis-port R``.
"""

from __future__ import annotations

import argparse
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def ping(port: int) -> bool:
    """PING the redis on 127.0.0.1:``port`` (RESP inline command)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                code, body = 200, b"ok\n"
            elif ping(args.redis_port):
                code, body = 200, b"PONG\n"
            else:
                code, body = 503, b"redis unavailable\n"
            self.send_response(code)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
