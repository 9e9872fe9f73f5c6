"""PromQL probes and metric evidence against Debian's real Prometheus on loopback, scraping a
real prometheus-client exporter: the probe fires only after its for-duration and resolves,
broken queries and an unreachable Prometheus are no data, diagnosis attaches the recent values
of the incident's query, and an alert cannot make heald query a URL it was not configured with."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import ValidationError

from heald.config import ProbeConfig
from heald.diagnose import RunbookReasoner, diagnose
from heald.diagnose.metrics import MetricsEvidence, metrics_evidence
from heald.models import Incident, IncidentState, Severity, Signal, SignalStatus
from heald.sources.probes import ProbeRunner
from heald.sources.promql import PrometheusAPI, PromQLError, PromQLProbe
from tests.conftest import free_port, make_config, wait_for

QUERY = "max by (job) (demo_queue_depth)"


class Exporter:
    """A real HTTP server exposing one gauge, ``demo_queue_depth``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.depth = Gauge("demo_queue_depth", "queued jobs", registry=self.registry)
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
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Exporter]]:
    """Debian's Prometheus scraping the exporter every 0.5 s; yields (its URL, the exporter)."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (scripts/apt-packages.txt lists it)")
    exporter = Exporter()
    exporter.depth.set(3)
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "500ms", "scrape_timeout": "400ms", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "demo", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "prometheus.log", "ab")
    proc = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def has_data() -> bool:
            try:
                return bool(PrometheusAPI(url).query(QUERY))
            except PromQLError:
                assert proc.poll() is None, (work / "prometheus.log").read_text()[-1500:]
                return False
        wait_for(has_data, timeout=60, interval=0.2, what="Prometheus to have scraped the exporter")
        yield url, exporter
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        exporter.close()


def promql_probe(url: str, **kw: object) -> ProbeConfig:
    return ProbeConfig.model_validate({"type": "promql", "url": url, "query": QUERY, "above": 10,
                                       "interval_seconds": 0.2, "timeout_seconds": 2, "failure_threshold": 1, **kw})


def seen(url: str, value: float) -> bool:
    """Has Prometheus scraped ``value`` yet?"""
    return any(s.points[-1][1] == value for s in PrometheusAPI(url).query(QUERY))


def test_a_promql_probe_fires_after_its_for_duration_and_resolves(prometheus, tmp_path: Path) -> None:
    url, exporter = prometheus
    exporter.depth.set(3)
    wait_for(lambda: seen(url, 3), what="the low value in Prometheus")
    probe = promql_probe(url, for_seconds=1.5, name="queue depth")
    cfg = make_config(tmp_path, services={"worker": {"probes": [probe.model_dump(mode="json", exclude_none=True)]}})
    emitted: list[Signal] = []
    results: list[tuple[float, bool, bool]] = []
    runner = ProbeRunner(cfg, None, emitted.append,
                         on_result=lambda _s, _p, r: results.append((time.monotonic(), r.ok, r.no_data)))
    runner.start()
    try:
        wait_for(lambda: any(ok and not nd for _, ok, nd in results), what="a passing check")
        assert not emitted
        exporter.depth.set(42)
        crossed = time.monotonic()
        [fired] = wait_for(lambda: emitted[:1], timeout=30, what="the probe to fire")
        assert fired.status == SignalStatus.firing and fired.kind == "probe_failed"
        pending = [t for t, ok, nd in results if nd and t > crossed]
        assert pending, "the crossing was first pending (no data), as a rule's for"
        assert time.monotonic() - crossed >= 1.5
        assert fired.labels["alertname"] == "PromQLThresholdExceeded" and fired.labels["job"] == "demo"
        assert fired.labels["probe_type"] == "promql" and fired.service == "worker"
        assert fired.annotations["promql"] == QUERY and fired.annotations["prometheus_url"] == url
        assert fired.annotations["value"] == "42" and fired.annotations["threshold"] == "above 10"
        assert "is 42, above 10" in fired.annotations["detail"]
        exporter.depth.set(2)
        resolved = wait_for(lambda: emitted[1:2], timeout=30, what="the probe to resolve")[0]
        assert resolved.status == SignalStatus.resolved and resolved.fingerprint == fired.fingerprint
    finally:
        runner.stop()


def test_below_picks_the_lowest_series_and_a_scalar_works(prometheus) -> None:
    url, exporter = prometheus
    exporter.depth.set(3)
    wait_for(lambda: seen(url, 3), what="the value in Prometheus")
    r = PromQLProbe(promql_probe(url, query=f"{QUERY} * 0 + 1", above=None, below=2))()
    assert not r.ok and r.value == 1 and "below 2" in r.detail
    r = PromQLProbe(promql_probe(url, query="scalar(max(demo_queue_depth))", above=100))()
    assert r.ok and not r.no_data and r.value == 3


def test_a_broken_query_an_empty_answer_and_no_prometheus_are_no_data(prometheus) -> None:
    url, _ = prometheus
    r = PromQLProbe(promql_probe(url, query="max by (job (demo_queue_depth"))()
    assert r.no_data and r.ok and "bad_data" in r.detail
    r = PromQLProbe(promql_probe(url, query="demo_queue_depth{job=\"nope\"}"))()
    assert r.no_data and "returned no series" in r.detail
    r = PromQLProbe(promql_probe(f"http://127.0.0.1:{free_port()}"))()
    assert r.no_data and "unreachable" in r.detail


def test_promql_probe_configuration_is_validated() -> None:
    with pytest.raises(ValidationError, match="needs 'query'"):
        ProbeConfig.model_validate({"type": "promql", "url": "http://127.0.0.1:9090", "above": 1})
    with pytest.raises(ValidationError, match="needs a threshold"):
        ProbeConfig.model_validate({"type": "promql", "url": "http://127.0.0.1:9090", "query": "up"})
    with pytest.raises(ValidationError, match="needs 'url'"):
        ProbeConfig.model_validate({"type": "promql", "query": "up", "above": 1})
    with pytest.raises(ValidationError, match="http"):
        ProbeConfig.model_validate({"type": "promql", "url": "file:///etc/passwd", "query": "up", "above": 1})


def _incident() -> Incident:
    now = datetime.now(UTC)
    return Incident(id=1, title="queue", service="worker", state=IncidentState.diagnosing, severity=Severity.critical,
                    fingerprint="f", group_key="g", started_at=now, detected_at=now, updated_at=now)


def test_diagnosis_attaches_the_recent_values_of_the_incidents_query(prometheus, tmp_path: Path) -> None:
    url, exporter = prometheus
    api = PrometheusAPI(url)
    for v in (5, 7):  # each value held until a 1 s step of a range query has seen it
        exporter.depth.set(v)
        wait_for(lambda v=v: any(p[1] == v for s in api.query_range(QUERY, time.time() - 20, time.time(), 1)
                                 for p in s.points), what=f"{v} in Prometheus' range")
    probe_signal = Signal(source="probe", kind="probe_failed", service="worker", summary="queue depth",
                          labels={"alertname": "PromQLThresholdExceeded"},
                          annotations={"promql": QUERY, "prometheus_url": url})
    expr = "max(demo_queue_depth)"
    alert = Signal(source="alertmanager", service="worker", summary="deep queue", labels={"alertname": "Deep"},
                   annotations={"generator_url": f"{url}/graph?g0.expr={quote(expr)}&g0.tab=1"})
    cfg = make_config(tmp_path, services={"worker": {"probes": [promql_probe(url).model_dump(mode="json",
                                                                                               exclude_none=True)]}})
    [configured] = metrics_evidence(cfg)
    assert configured.allowed == {url: url}
    gatherer = MetricsEvidence([url], window_seconds=20)
    finding = diagnose(_incident(), [probe_signal, alert], [RunbookReasoner([]), gatherer])
    lines = [e for e in finding.diagnosis.evidence if e.startswith("prometheus: ")]
    assert len(lines) == 2, finding.diagnosis.evidence
    by_query = {line.split(" over ")[0]: line for line in lines}
    assert 'prometheus: max by (job) (demo_queue_depth){job="demo"}' in by_query
    assert "prometheus: max(demo_queue_depth)" in by_query
    line = by_query['prometheus: max by (job) (demo_queue_depth){job="demo"}']
    assert "last 7" in line and line.endswith(", 7)") and "over the last 20 s" in line, line
    values = [float(v) for v in line.split("values: ")[1].rstrip(")").split(", ")]
    assert 2 <= len(values) <= 12 and min(values) <= 5  # the 5 (or the lower values before it) and the 7
    assert metrics_evidence(make_config(tmp_path / "none")) == []  # no promql probe: nothing to ask


def test_an_alert_cannot_make_heald_query_another_url(prometheus) -> None:
    """The attack: a webhook payload whose generator URL (or promql annotations) points at a
    server of the attacker's choosing. heald asks only the configured Prometheus."""
    url, _ = prometheus
    hits: list[str] = []

    class Trap(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    trap = ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    other = f"http://127.0.0.1:{trap.server_address[1]}"
    try:
        signals = [Signal(source="alertmanager", labels={"alertname": "X"},
                          annotations={"generator_url": f"{other}/graph?g0.expr=up"}),
                   Signal(source="generic", labels={"alertname": "Y"},
                          annotations={"promql": "up", "prometheus_url": other}),
                   Signal(source="generic", labels={"alertname": "Z"},  # the right host, another port
                          annotations={"promql": "up", "prometheus_url": url.rsplit(":", 1)[0] + ":1"})]
        gatherer = MetricsEvidence([url])
        assert gatherer.queries(signals) == []
        assert gatherer.evidence(_incident(), signals) == []
        # with the trap allowed the same signals do reach it: the test would see an attack succeed
        assert MetricsEvidence([other]).evidence(_incident(), signals[:1])
        assert hits and hits[0].startswith("/api/v1/query_range?query=up")
        hits.clear()
        gatherer.evidence(_incident(), signals)  # synchronous: any request it made has been answered
        assert hits == []
    finally:
        trap.shutdown()
        trap.server_close()
