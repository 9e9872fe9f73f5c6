"""The demo shop: a small HTTP service heald supervises in ``heald demo``.

Self-contained (the standard library and prometheus-client), because each release of the shop
is a copy of this file in its own release directory::

    python <releases>/current/shop.py --port PORT [--payments-url URL] [--config shop.json]
                                      [--log-dir DIR] [--starts-file FILE]

(``python -m heald.demo.shop`` runs it too.) Routes:

- ``GET /healthz``: 200 ``{"status": "ok"}`` when it can serve (its database pool is usable),
  else 503 with the error code;
- ``GET /products``: the catalogue with prices; ``POST /checkout``: charges the payments
  service (``POST <payments-url>/charge``);
- ``GET /metrics``: Prometheus text format: ``http_requests_total{route,method,code}``,
  ``http_request_duration_seconds{route}`` (histogram), ``shop_errors_total{route,error}``,
  ``process_resident_memory_bytes`` and the other process metrics, ``shop_release_info``;
- admin API: ``GET``/``PUT /admin/flags`` (chaos flags, below), ``POST /admin/reload``
  (re-read the configuration file; an unreadable one is refused and the old one kept),
  ``POST /admin/db/reconnect`` (recycle the database connection pool).

Errors answer JSON ``{"error": "CODE", ...}``. Every request is appended to
``<log-dir>/shop.log`` in the NCSA common log format. Each start appends ``<pid> <epoch>`` to the
starts file, so a test can count how often the shop was (re)started.

Chaos flags (in memory: a restart clears them): ``checkout_failures`` (80% of checkouts fail
with 500 ``PAYMENT_GATEWAY_TIMEOUT``), ``api_errors`` (the database connections break: 50% of
``GET /products`` fail with 500 ``DB_CONNECTION_FAILED`` until the pool is recycled),
``slow_mode`` (3–10 s latency on products and checkout), ``memory_leak`` (resident memory grows
by 4 MB every 50 ms, up to 600 MB), ``healthz_blip`` (the next N health checks answer 503).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

RELEASE_DIR = Path(__file__).resolve().parent
PRODUCTS = [{"id": 1, "name": "teapot", "price": 18.5}, {"id": 2, "name": "kettle", "price": 31.0},
            {"id": 3, "name": "tea cosy", "price": 9.9}]
TAX_RATE = 0.2
CURRENCY: dict[str, Any] = {"code": "EUR", "decimals": 2}
LEAK_STEP = 4 << 20
LEAK_CAP = 600 << 20
DEFAULT_CONFIG = {"db_pool_size": 5, "payments_timeout_seconds": 2.0, "currency": "EUR"}

REQUESTS = Counter("http_requests_total", "HTTP requests by route, method and status code", ["route", "method", "code"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency by route", ["route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ERRORS = Counter("shop_errors_total", "Failed requests by route and error code", ["route", "error"])
RELEASE = Gauge("shop_release_info", "The release this process runs", ["release"])
FLAGS = Gauge("shop_chaos_flag", "Chaos flags that are on", ["flag"])


def price(product: dict[str, Any]) -> float:
    return round(product["price"] * (1 + TAX_RATE), CURRENCY["decimals"])  # faults.GOOD_LINE: the bad release edits it


class ShopError(Exception):
    def __init__(self, status: int, code: str, detail: str = ""):
        super().__init__(code)
        self.status, self.code, self.detail = status, code, detail


class Shop:
    """The shop's state: configuration, chaos flags, the leak, the access log."""

    def __init__(self, config_path: Path | None, payments_url: str, log_dir: Path | None):
        self.config_path = config_path
        self.payments_url = payments_url.rstrip("/")
        self.config = self.read_config()
        self.flags: dict[str, object] = {"checkout_failures": False, "api_errors": False, "slow_mode": False,
                                         "memory_leak": False, "healthz_blip": 0}
        self.slow_over = threading.Event()
        self.slow_over.set()
        self.leaked: list[bytes] = []
        self.lock = threading.Lock()
        self.log = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log = open(log_dir / "shop.log", "a", buffering=1)
        release = (RELEASE_DIR / "VERSION").read_text().strip() if (RELEASE_DIR / "VERSION").exists() else "dev"
        self.release = release
        RELEASE.labels(release).set(1)
        for name in self.flags:
            FLAGS.labels(name).set(0)

    def read_config(self) -> dict[str, Any]:
        if self.config_path is None:
            return dict(DEFAULT_CONFIG)
        data = json.loads(self.config_path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("db_pool_size"), int):
            raise ValueError("db_pool_size: expected an integer")
        return {**DEFAULT_CONFIG, **data}

    def set_flags(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            for name, value in changes.items():
                if name not in self.flags:
                    raise ShopError(400, "UNKNOWN_FLAG", f"{name}: expected one of {', '.join(self.flags)}")
                if name == "healthz_blip":
                    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                        raise ShopError(400, "BAD_FLAG_VALUE", "healthz_blip: expected a count ≥ 0")
                elif not isinstance(value, bool):
                    raise ShopError(400, "BAD_FLAG_VALUE", f"{name}: expected true or false")
                self.flags[name] = value
                FLAGS.labels(name).set(float(value))
            if self.flags["slow_mode"]:
                self.slow_over.clear()
            else:
                self.slow_over.set()
            if self.flags["memory_leak"]:
                threading.Thread(target=self._leak, daemon=True).start()
            return dict(self.flags)

    def _leak(self) -> None:
        while self.flags["memory_leak"] and len(self.leaked) * LEAK_STEP < LEAK_CAP:
            self.leaked.append(b"\xa5" * LEAK_STEP)  # written, so resident
            time.sleep(0.05)

    def db(self, route: str) -> None:
        if self.config["db_pool_size"] < 1:
            raise ShopError(503, "DB_POOL_EXHAUSTED", f"db_pool_size is {self.config['db_pool_size']}")
        if self.flags["api_errors"] and route == "/products" and random.random() < 0.5:
            raise ShopError(500, "DB_CONNECTION_FAILED", "server closed the connection unexpectedly")

    def slow(self) -> None:
        if self.flags["slow_mode"]:
            self.slow_over.wait(random.uniform(3.0, 10.0))

    def charge(self, amount: float) -> dict[str, Any]:
        if self.flags["checkout_failures"] and random.random() < 0.8:
            raise ShopError(500, "PAYMENT_GATEWAY_TIMEOUT", "the payment gateway did not answer")
        req = urllib.request.Request(f"{self.payments_url}/charge", method="POST",
                                     data=json.dumps({"amount": amount, "currency": self.config["currency"]}).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.config["payments_timeout_seconds"]) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ShopError(502, "PAYMENT_SERVICE_ERROR", f"payments answered {exc.code}") from exc
        except (TimeoutError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise ShopError(504, "PAYMENT_SERVICE_TIMEOUT", str(reason)) from exc
            raise ShopError(502, "PAYMENT_SERVICE_UNAVAILABLE", str(reason)) from exc


class Handler(BaseHTTPRequestHandler):
    server_version = "heald-demo-shop/2"
    shop: Shop

    def _send(self, status: int, body: object, ctype: str = "application/json") -> int:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return len(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ShopError(400, "BAD_JSON", str(exc)) from exc
        if not isinstance(data, dict):
            raise ShopError(400, "BAD_JSON", "expected a JSON object")
        return data

    def _route(self) -> str:
        path = self.path.split("?")[0]
        if path.startswith("/admin/"):
            return "/admin"
        return path if path in ("/healthz", "/products", "/checkout", "/metrics") else "other"

    def _handle(self, method: str) -> None:
        route = self._route()
        t0 = time.monotonic()
        status, size = 500, 0
        try:
            status, body, ctype = self._dispatch(method, self.path.split("?")[0])
        except ShopError as exc:
            status, body, ctype = exc.status, {"error": exc.code, "detail": exc.detail}, "application/json"
            ERRORS.labels(route, exc.code).inc()
        except Exception as exc:  # an unexpected failure is a 500 with its traceback in the log, as any web stack
            traceback.print_exc(file=sys.stderr)
            status, body, ctype = 500, {"error": "INTERNAL_ERROR", "detail": f"{exc.__class__.__name__}: {exc}"}, \
                "application/json"
            ERRORS.labels(route, "INTERNAL_ERROR").inc()
        try:
            size = self._send(status, body, ctype)
        except (BrokenPipeError, ConnectionResetError):
            pass
        REQUESTS.labels(route, method, str(status)).inc()
        if route not in ("/metrics", "/admin"):
            LATENCY.labels(route).observe(time.monotonic() - t0)
        if self.shop.log is not None:
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
            self.shop.log.write(f'{self.client_address[0]} - - [{stamp}] "{method} {self.path} HTTP/1.1" {status} {size}\n')

    def _dispatch(self, method: str, path: str) -> tuple[int, object, str]:
        shop = self.shop
        if method == "GET" and path == "/healthz":
            with shop.lock:
                if shop.flags["healthz_blip"]:
                    shop.flags["healthz_blip"] = int(shop.flags["healthz_blip"]) - 1  # type: ignore[call-overload]
                    raise ShopError(503, "HEALTH_CHECK_FAILED", "a transient blip")
            shop.db("/healthz")
            return 200, {"status": "ok", "pid": os.getpid(), "release": shop.release}, "application/json"
        if method == "GET" and path == "/metrics":
            return 200, generate_latest(), CONTENT_TYPE_LATEST
        if method == "GET" and path == "/products":
            shop.db(path)
            shop.slow()
            return 200, [{**p, "price": price(p), "currency": shop.config["currency"]} for p in PRODUCTS], "application/json"
        if method == "POST" and path == "/checkout":
            order = self._body()
            product = next((p for p in PRODUCTS if p["id"] == order.get("product_id", 1)), None)
            if product is None:
                raise ShopError(404, "NO_SUCH_PRODUCT", f"product_id {order.get('product_id')!r}")
            shop.db(path)
            shop.slow()
            charge = shop.charge(price(product))
            return 200, {"order": "confirmed", "charge": charge}, "application/json"
        if path == "/admin/flags" and method == "GET":
            return 200, dict(shop.flags), "application/json"
        if path == "/admin/flags" and method == "PUT":
            return 200, shop.set_flags(self._body()), "application/json"
        if path == "/admin/reload" and method == "POST":
            try:
                config = shop.read_config()
            except (OSError, ValueError) as exc:
                raise ShopError(400, "CONFIG_REFUSED", f"{exc}; keeping the running configuration") from exc
            shop.config = config
            return 200, {"reloaded": True, "config": config}, "application/json"
        if path == "/admin/db/reconnect" and method == "POST":
            with shop.lock:
                shop.flags["api_errors"] = False
                FLAGS.labels("api_errors").set(0)
            return 200, {"reconnected": True, "pool_size": shop.config["db_pool_size"]}, "application/json"
        raise ShopError(404, "NOT_FOUND", f"{method} {path}")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="shop")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--payments-url", default="http://127.0.0.1:9")
    p.add_argument("--config", type=Path)
    p.add_argument("--log-dir", type=Path)
    p.add_argument("--starts-file", type=Path)
    args = p.parse_args(argv)
    try:
        shop = Shop(args.config, args.payments_url, args.log_dir)
    except (OSError, ValueError) as exc:
        sys.exit(f"shop: cannot start: configuration {args.config}: {exc}")
    Handler.shop = shop
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if args.starts_file:
        with open(args.starts_file, "a") as f:
            f.write(f"{os.getpid()} {time.time():.3f}\n")
    print(f"shop release {shop.release} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
