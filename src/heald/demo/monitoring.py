"""A real Prometheus and Alertmanager on loopback, watching the demo shop and sending their
alerts to heald (``heald demo --with-prometheus`` and the end-to-end test).

Debian's ``prometheus`` and ``prometheus-alertmanager`` run as child processes with their state
in the demo's work directory (their systemd units are not used). Prometheus scrapes the shop's
``/metrics`` every second and evaluates rules equivalent to the demo's metric-threshold probes
(:data:`RULES`); Alertmanager groups by alertname and service with ``group_wait: 0s`` and posts
to heald's ``/v1/webhooks/alertmanager`` with ``send_resolved``, authenticating with the
webhook secret as a bearer token. See ``../shared/recipes/prometheus-alertmanager.md``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from heald.demo.system import ERROR_RATIO, MEMORY_LIMIT_BYTES, P95_SECONDS, free_port

PROMETHEUS = "prometheus"
ALERTMANAGER = "prometheus-alertmanager"

#: The alert rules (Prometheus rule format), the same thresholds as the demo's metric probes.
RULES = [
    {"alert": "HighErrorRate",
     "expr": f'sum by (route, error) (rate(shop_errors_total[5s])) / on (route) group_left '
             f'sum by (route) (rate(http_requests_total{{route=~"/products|/checkout"}}[5s])) > {ERROR_RATIO}',
     "labels": {"service": "shop", "severity": "critical"},
     "annotations": {"summary": "{{ $labels.route }} fails with {{ $labels.error }}: error ratio {{ $value | humanize }}",
                     "detail": "error ratio {{ $value | humanize }} above " + str(ERROR_RATIO)}},
    {"alert": "HighLatency",
     "expr": f'histogram_quantile(0.95, sum by (route, le) (rate(http_request_duration_seconds_bucket'
             f'{{route=~"/products|/checkout"}}[10s]))) > {P95_SECONDS}',
     "labels": {"service": "shop", "severity": "warning"},
     "annotations": {"summary": "p95 latency of {{ $labels.route }} is {{ $value | humanize }}s",
                     "detail": "p95 latency {{ $value | humanize }}s above " + str(P95_SECONDS) + "s"}},
    {"alert": "MemoryLimitExceeded",
     "expr": f'process_resident_memory_bytes{{job="shop"}} > {MEMORY_LIMIT_BYTES}',
     "labels": {"service": "shop", "severity": "critical"},
     "annotations": {"summary": "the shop's resident memory is {{ $value | humanize1024 }}B",
                     "detail": "resident memory {{ $value | humanize1024 }}B above its limit"}},
]


def installed() -> str | None:
    """None when both binaries are on PATH, else what is missing and how to install it."""
    missing = [b for b in (PROMETHEUS, ALERTMANAGER) if shutil.which(b) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not found; install them with: apt-get install prometheus "
            f"prometheus-alertmanager")


@dataclass
class MonitoringStack:
    """Prometheus + Alertmanager for the demo shop. :meth:`start` writes their configuration
    under ``dir`` and starts both, returning once both are ready; :meth:`stop` stops them."""

    dir: Path
    shop_port: int
    webhook_url: str
    webhook_secret: str
    prometheus_port: int = field(default_factory=free_port)
    alertmanager_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "shop", "interval": "1s",
                                                                           "rules": RULES}]}))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(self.dir / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}]},
            "scrape_configs": [{"job_name": "shop", "static_configs": [{"targets": [f"127.0.0.1:{self.shop_port}"]}]}],
        }))
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "heald", "group_by": ["alertname", "service"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "heald", "webhook_configs": [{
                "url": self.webhook_url, "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": self.webhook_secret}}}]}],
        }))

    def start(self, timeout: float = 60.0) -> None:
        """Start both; raises RuntimeError naming what is missing or did not become ready
        (with the tail of its log)."""
        problem = installed()
        if problem:
            raise RuntimeError(problem)
        self.write_config()
        self._spawn("alertmanager", [ALERTMANAGER, f"--config.file={self.dir / 'alertmanager.yml'}",
                                     f"--storage.path={self.dir / 'am'}",
                                     f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                                     "--cluster.listen-address="])
        self._spawn("prometheus", [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={self.dir / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                                   "--web.enable-lifecycle"])
        try:
            for name, url in (("alertmanager", self.alertmanager_url), ("prometheus", self.prometheus_url)):
                self._wait_ready(name, url, timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True))

    def _wait_ready(self, name: str, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for p in self.processes):
                break
            time.sleep(0.1)
        tail = (self.dir / f"{name}.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{name} did not become ready at {url} within {timeout:g} s; its log ends:\n{tail}")

    def firing(self) -> list[dict[str, object]]:
        """Alertmanager's active alerts (its v2 API)."""
        return list(httpx.get(f"{self.alertmanager_url}/api/v2/alerts", timeout=5).json())

    def stop(self) -> None:
        """Stop both (SIGTERM, then SIGKILL after 10 s), by their process ids."""
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.processes.clear()
