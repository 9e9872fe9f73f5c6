"""Metric-threshold and disk probes against a real /metrics endpoint (prometheus-client's own
exposition over real HTTP on loopback) and real directories."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from heald.config import ProbeConfig
from heald.models import SignalStatus
from heald.sources.probes import MetricProbe, ProbeRunner, disk_usage, histogram_quantile, make_checker, run_probe
from tests.conftest import free_port, make_config, wait_for


class Exporter:
    """A real HTTP server exposing a prometheus-client registry; ``reset()`` swaps in a fresh
    registry, as a restarted process would."""

    def __init__(self) -> None:
        self.reset()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = generate_latest(outer.registry)
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "requests", ["route", "code"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "latency", ["route"], registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.rss = Gauge("process_resident_memory_bytes", "rss", registry=self.registry)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    e = Exporter()
    yield e
    e.close()


def ratio_probe(url: str, **kw: object) -> ProbeConfig:
    return ProbeConfig.model_validate({"type": "metric", "url": url, "metric": "http_requests_total",
                                       "match": ['code=~"5.."'], "by": ["route"], "per": "http_requests_total",
                                       "window_seconds": 10, "above": 0.2, "min_count": 5, **kw})


def test_error_ratio_per_route_names_the_worst_route(exporter: Exporter) -> None:
    check = MetricProbe(ratio_probe(exporter.url))
    first = check()
    assert first.no_data and first.ok  # one scrape cannot give a rate
    exporter.requests.labels("/products", "200").inc(20)
    exporter.requests.labels("/checkout", "200").inc(10)
    r = check()
    assert r.no_data, r.detail  # traffic, but no 5xx series at all yet
    exporter.requests.labels("/checkout", "500").inc(30)  # a series that appears mid-window starts from 0
    exporter.requests.labels("/products", "200").inc(20)
    r = check()
    assert not r.ok and r.labels == {"route": "/checkout"}
    assert r.value == pytest.approx(30 / 40)
    assert 'route="/checkout"' in r.detail and "above 0.2" in r.detail


def test_ratio_needs_min_count_events(exporter: Exporter) -> None:
    check = MetricProbe(ratio_probe(exporter.url, min_count=50))
    check()
    exporter.requests.labels("/checkout", "500").inc(3)
    r = check()
    assert r.no_data and "at least 50" in r.detail


def test_counter_reset_is_not_a_negative_rate(exporter: Exporter) -> None:
    check = MetricProbe(ratio_probe(exporter.url, window_seconds=30, min_count=1))
    exporter.requests.labels("/a", "500").inc(100)
    exporter.requests.labels("/a", "200").inc(300)
    check()
    exporter.reset()  # the target restarted: its counters begin again
    exporter.requests.labels("/a", "500").inc(7)
    exporter.requests.labels("/a", "200").inc(7)
    r = check()
    # the increases counted are the 7 and 14 after the reset, not 7 - 100 and 14 - 400
    assert r.value == pytest.approx(0.5) and not r.ok


def test_p95_latency_over_the_window(exporter: Exporter) -> None:
    probe = ProbeConfig.model_validate({"type": "metric", "url": exporter.url, "metric": "http_request_duration_seconds",
                                        "quantile": 0.95, "by": ["route"], "window_seconds": 10, "above": 1.0})
    check = MetricProbe(probe)
    for _ in range(50):
        exporter.latency.labels("/products").observe(0.02)
    check()  # the fast past is before the window's first scrape
    r = check()
    assert r.no_data  # nothing observed during the window
    for _ in range(20):
        exporter.latency.labels("/products").observe(4.0)
    r = check()
    assert not r.ok and r.labels == {"route": "/products"} and 2.5 < (r.value or 0) <= 5
    assert "p95 of http_request_duration_seconds" in r.detail


def test_gauge_threshold_and_scrape_failure_is_no_data(exporter: Exporter) -> None:
    probe = ProbeConfig.model_validate({"type": "metric", "url": exporter.url, "metric": "process_resident_memory_bytes",
                                        "above": 100e6})
    exporter.rss.set(50e6)
    assert run_probe(probe, "shop").ok
    exporter.rss.set(150e6)
    r = run_probe(probe, "shop")
    assert not r.ok and r.value == 150e6
    dead = probe.model_copy(update={"url": f"http://127.0.0.1:{free_port()}/metrics", "timeout_seconds": 0.3})
    r = run_probe(dead, "shop")
    assert r.ok and r.no_data and "scraping" in r.detail


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 10 observations: 5 in (0, 1], 4 in (1, 2], 1 in (2, +Inf)
    buckets = [(1.0, 5.0), (2.0, 9.0), (float("inf"), 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.0)
    assert histogram_quantile(0.7, buckets) == pytest.approx(1.5)
    assert histogram_quantile(0.99, buckets) == pytest.approx(2.0)  # +Inf bucket: the largest finite bound


def test_metric_probe_config_is_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs a threshold"):
        ProbeConfig.model_validate({"type": "metric", "url": "http://x/metrics", "metric": "up"})
    with pytest.raises(ValidationError, match="invalid matcher"):
        ProbeConfig.model_validate({"type": "metric", "url": "http://x/metrics", "metric": "up", "above": 1,
                                    "match": ["code 500"]})
    with pytest.raises(ValidationError, match="needs 'path' and 'max_bytes'"):
        ProbeConfig.model_validate({"type": "disk", "path": "/tmp"})


def test_disk_probe_counts_bytes_under_the_directory(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "old").mkdir(parents=True)
    (logs / "a.log").write_bytes(b"x" * 3000)
    (logs / "old" / "b.log.1").write_bytes(b"x" * 5000)
    os.symlink("/etc/passwd", logs / "link")  # not followed
    assert disk_usage(logs, 100) == (8000, 2, True)
    assert disk_usage(logs, 1)[2] is False
    probe = ProbeConfig(type="disk", path=logs, max_bytes=6000)
    r = run_probe(probe, "shop")
    assert not r.ok and r.value == 8000 and "above its quota" in r.detail
    assert run_probe(probe.model_copy(update={"max_bytes": 10_000}), "shop").ok
    assert run_probe(probe.model_copy(update={"path": tmp_path / "missing"}), "shop").ok


def test_runner_fires_with_the_groups_labels_and_ignores_no_data(tmp_path: Path, exporter: Exporter) -> None:
    cfg = make_config(tmp_path, services={"shop": {"probes": [{
        **ratio_probe(exporter.url, window_seconds=2, min_count=3).model_dump(exclude_none=True),
        "alertname": "HighErrorRate", "interval_seconds": 0.05, "failure_threshold": 2}]}})
    emitted, results = [], []
    runner = ProbeRunner(cfg, None, emitted.append, on_result=lambda s, p, r: results.append(r))
    runner.start()
    try:
        wait_for(lambda: len(results) >= 5, what="scrapes without traffic")
        assert all(r.no_data for r in results) and not emitted
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                exporter.requests.labels("/products", "500").inc()
                exporter.requests.labels("/products", "200").inc()
                time.sleep(0.01)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        [sig] = wait_for(lambda: emitted, what="a firing signal")
        stop.set()
        t.join()
        assert sig.status == SignalStatus.firing and sig.labels["alertname"] == "HighErrorRate"
        assert sig.labels["route"] == "/products" and sig.labels["probe_type"] == "metric"
        assert float(sig.annotations["value"]) > 0.2 and sig.annotations["threshold"] == "above 0.2"
        # no traffic now: no data, so neither a recovery nor a new firing
        n = len(results)
        wait_for(lambda: len(results) > n + 10 and results[-1].no_data, timeout=10, what="the window to empty")
        assert len(emitted) == 1
        for _ in range(40):
            exporter.requests.labels("/products", "200").inc()
        wait_for(lambda: len(emitted) == 2, what="the resolved signal")
        assert emitted[1].status == SignalStatus.resolved and emitted[1].fingerprint == sig.fingerprint
    finally:
        runner.stop()


def test_make_checker_keeps_a_metric_probes_window(exporter: Exporter) -> None:
    check = make_checker(ratio_probe(exporter.url, min_count=1), "shop")
    check()
    exporter.requests.labels("/x", "503").inc(5)
    assert not check().ok
