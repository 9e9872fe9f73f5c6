"""The demo system: a shop and its payments service under heald, built in a work directory.

Layout of the work directory::

    state/                  heald's state (SQLite store, DBOS, service logs)
    shop-config/            a git repository holding shop.json, the shop's configuration
    releases/v1/shop.py     the shop's releases (a copy of heald/demo/shop.py and a VERSION)
    current -> releases/v1  the live release; revisions.log records deploys and rollbacks
    logs/shop/              the shop's access log and its rotated files
    runbooks/demo.yaml      the shop's own runbooks (from demo/runbooks.yaml, URLs filled in)

:func:`demo_config` is the heald configuration that watches it: the shop (process, HTTP,
metric-threshold and disk probes; depends on payments; its config repository, releases and
log directory declared for the remedies), payments (process and HTTP probes), short windows
so that a demo run takes seconds. :func:`start_demo` builds it, starts heald's runtime over it
and the load generator, and waits until the shop is healthy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from heald._git import run
from heald.config import HealdConfig
from heald.engine import Runtime
from heald.sources.probes import ProbeResult

#: The author the demo commits and deploys as (a colleague of the on-call engineer).
DEPLOYER = ("Dana Dev", "dana@example.com")
SHOP_CONFIG = {"db_pool_size": 5, "payments_timeout_seconds": 2.0, "currency": "EUR"}
#: Thresholds of the demo's probes.
ERROR_RATIO = 0.2
P95_SECONDS = 1.0
MEMORY_LIMIT_BYTES = 150_000_000
LOG_QUOTA_BYTES = 20_000_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(repo: Path, *args: str) -> str:
    """git in ``repo`` as the demo's deployer (hardened, :func:`heald._git.run`); returns its
    stripped stdout. Raises GitError."""
    env = {"GIT_AUTHOR_NAME": DEPLOYER[0], "GIT_AUTHOR_EMAIL": DEPLOYER[1],
           "GIT_COMMITTER_NAME": DEPLOYER[0], "GIT_COMMITTER_EMAIL": DEPLOYER[1]}
    return run(*args, cwd=repo, env=env, timeout=30.0).strip()


def shop_source() -> str:
    """The shop's code, which every release directory holds a copy of."""
    return (resources.files("heald.demo") / "shop.py").read_text()


def write_release(workdir: Path, name: str, source: str) -> Path:
    """Create release directory ``name`` holding ``source`` as shop.py and its VERSION."""
    d = workdir / "releases" / name
    d.mkdir(parents=True, exist_ok=False)
    (d / "shop.py").write_text(source)
    (d / "VERSION").write_text(name + "\n")
    return d


def point_current(workdir: Path, name: str) -> None:
    """Make ``current`` point at release ``name`` atomically."""
    tmp = workdir / ".current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(workdir / "releases" / name, tmp)
    os.replace(tmp, workdir / "current")


def build_layout(workdir: Path, ports: dict[str, int]) -> None:
    """Create the demo's config repository, first release, log directory and runbooks."""
    repo = workdir / "shop-config"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "shop.json").write_text(json.dumps(SHOP_CONFIG, indent=2) + "\n")
    git(repo, "add", "shop.json")
    git(repo, "commit", "-qm", "Shop configuration")
    write_release(workdir, "v1", shop_source())
    point_current(workdir, "v1")
    with open(workdir / "revisions.log", "a") as log:
        log.write(f"Branch main (at {git(repo, 'rev-parse', '--short', 'HEAD')}) deployed as release v1 by "
                  f"{DEPLOYER[0].split()[0].lower()}\n")
    (workdir / "logs" / "shop").mkdir(parents=True)
    (workdir / "runbooks").mkdir()
    template = (resources.files("heald.demo") / "runbooks.yaml").read_text()
    (workdir / "runbooks" / "demo.yaml").write_text(template.replace("@SHOP@", f"http://127.0.0.1:{ports['shop']}"))


def demo_config(workdir: Path, ports: dict[str, int], *, metric_probes: bool = True,
                webhook_secret: str | None = None, targets: dict[str, Any] | None = None) -> HealdConfig:
    """heald's configuration for the demo system in ``workdir`` (see the module docstring).
    Without ``metric_probes`` the shop's metrics are left to Prometheus (``--with-prometheus``),
    whose Alertmanager authenticates with ``webhook_secret``."""
    py = sys.executable
    shop_url = f"http://127.0.0.1:{ports['shop']}"
    metrics = f"{shop_url}/metrics"
    fast = {"interval_seconds": 0.25, "timeout_seconds": 1.0, "failure_threshold": 2}
    shop_probes: list[dict[str, Any]] = [
        {"type": "process", "interval_seconds": 0.1, "failure_threshold": 2},
        {"type": "http", "name": "shop /healthz", "url": f"{shop_url}/healthz", "interval_seconds": 0.2,
         "timeout_seconds": 0.5, "failure_threshold": 2},
        {"type": "disk", "name": "shop log directory", "alertname": "LogDirectoryOverQuota",
         "path": str(workdir / "logs" / "shop"), "max_bytes": LOG_QUOTA_BYTES, "interval_seconds": 0.5,
         "failure_threshold": 2},
    ]
    if metric_probes:
        shop_probes += [
            {"type": "metric", "name": "shop error ratio", "alertname": "HighErrorRate", "url": metrics,
             "metric": "shop_errors_total", "by": ["route", "error"], "per": "http_requests_total",
             "per_match": ['route=~"/products|/checkout"'], "window_seconds": 2.0, "min_count": 5,
             "above": ERROR_RATIO, **fast},
            {"type": "metric", "name": "shop p95 latency", "alertname": "HighLatency", "url": metrics,
             "metric": "http_request_duration_seconds", "quantile": 0.95, "match": ['route=~"/products|/checkout"'],
             "by": ["route"], "window_seconds": 5.0, "above": P95_SECONDS, **fast},
            {"type": "metric", "name": "shop resident memory", "alertname": "MemoryLimitExceeded", "url": metrics,
             "metric": "process_resident_memory_bytes", "above": MEMORY_LIMIT_BYTES, **fast},
        ]
    data = {
        "state_dir": str(workdir / "state"), "environment": "demo",
        "services": {
            "shop": {
                "command": [py, str(workdir / "current" / "shop.py"), "--port", str(ports["shop"]),
                            "--payments-url", f"http://127.0.0.1:{ports['payments']}",
                            "--config", str(workdir / "shop-config" / "shop.json"),
                            "--log-dir", str(workdir / "logs" / "shop"), "--starts-file", str(workdir / "shop.starts")],
                "depends_on": ["payments"],
                "probes": shop_probes,
                "config_repo": {"path": str(workdir / "shop-config"), "reload_url": f"{shop_url}/admin/reload"},
                "releases": {"dir": str(workdir / "releases"), "current": str(workdir / "current")},
                "cleanup": [{"path": str(workdir / "logs" / "shop"), "pattern": "*.log.*", "older_than_seconds": 3600}],
            },
            "payments": {
                "command": [py, "-m", "heald.demo.payments", "--port", str(ports["payments"]),
                            "--starts-file", str(workdir / "payments.starts")],
                "probes": [
                    {"type": "process", "interval_seconds": 0.1, "failure_threshold": 2},
                    {"type": "http", "name": "payments /healthz", "url": f"http://127.0.0.1:{ports['payments']}/healthz",
                     "interval_seconds": 0.2, "timeout_seconds": 0.5, "failure_threshold": 2},
                ],
            },
        },
        "runbooks": [str(workdir / "runbooks")],
        "correlation": {"group_by": ["service"]},
        "remedies": {"http_allowed_urls": [f"{shop_url}/admin/"]},
        # the demo breaks the same services on purpose, back to back: no cooldown between incidents
        "policy": {"budgets": {"remedy_cooldown_seconds": 0,
                               "rate_limit_per_target": {"max_actions": 1000, "window_seconds": 3600}}},
        "healing": {"group_wait_seconds": 0.3, "retry_delay_seconds": 1.0, "stabilization_seconds": 1.0,
                    "verify_interval_seconds": 0.1, "verify_timeout_seconds": 20.0 if metric_probes else 40.0,
                    "max_attempts": 3},
    }
    if webhook_secret:
        data["webhooks"] = {"alertmanager": {"secret": webhook_secret}}
    if targets:  # the adopted container and systemd unit (heald.demo.targets)
        data["containers"] = targets["containers"]
        data["systemd_units"] = targets["systemd_units"]
        data["services"] = {**data["services"], **targets["services"]}  # type: ignore[dict-item]
    cfg = HealdConfig.model_validate(data)
    cfg.resolve_paths(workdir)
    return cfg


@dataclass
class DemoEnv:
    """The running demo system: work directory, config, runtime, ports, the load generator,
    the latest result of every probe (``(service, probe label) -> ProbeResult``), its failures,
    and the recent history of all results (for the benchmark)."""

    workdir: Path
    config: HealdConfig
    runtime: Runtime
    ports: dict[str, int]
    traffic: subprocess.Popen[bytes] | None = None
    monitoring: Any = None
    server: Any = None
    targets: Any = None
    targets_missing: str | None = None
    results: dict[tuple[str, str], ProbeResult] = field(default_factory=dict)
    failures: list[tuple[str, str, ProbeResult]] = field(default_factory=list)
    history: deque[tuple[str, str, ProbeResult]] = field(default_factory=lambda: deque(maxlen=20_000))

    @property
    def shop_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['shop']}"

    def pid(self, service: str) -> int:
        proc = self.runtime.supervisor.get(service)
        ident = proc.identity() if proc else None
        if ident is None:
            raise RuntimeError(f"demo service {service} is not running")
        return ident.pid

    def record(self, service: str, probe: Any, result: ProbeResult) -> None:
        """The probe runner's ``on_result``: keep the latest result, and every failure."""
        self.results[(service, probe.label)] = result
        self.history.append((service, probe.label, result))
        if not result.ok:
            self.failures.append((service, probe.label, result))
            del self.failures[:-1000]

    def healthy(self) -> bool:
        """Every probe's latest result passes (or has no data) and no incident is open."""
        if len(self.results) < sum(len(s.probes) for s in self.config.services.values()):
            return False
        if not all(r.ok for r in self.results.values()):
            return False
        if any(not i.state.terminal for i in self.runtime.store.list_incidents(limit=20)):
            return False
        return self.monitoring is None or not self.monitoring.firing()

    def stop(self) -> None:
        if self.monitoring is not None:
            self.monitoring.stop()
        if self.targets is not None:
            self.targets.stop()
        if self.server is not None:
            self.server.stop()
        if self.traffic is not None and self.traffic.poll() is None:
            self.traffic.terminate()
            try:
                self.traffic.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.traffic.kill()
        self.runtime.stop(stop_services=True)


def wait_healthy(url: str, timeout: float = 15.0) -> None:
    """Poll ``url`` until it answers 200; raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become healthy within {timeout:g} s")


def start_demo(workdir: Path, *, with_prometheus: bool = False, traffic_rps: float = 20.0,
               with_targets: bool = True) -> DemoEnv:
    """Build the demo system in ``workdir`` (emptied first), start heald's runtime over it and
    the load generator; returns once the shop answers. With ``with_targets``, where podman can
    run, the system also has a web container and a worker systemd unit heald adopts
    (:mod:`heald.demo.targets`). ``with_prometheus``: the shop's metrics
    are watched by a real Prometheus and Alertmanager (:mod:`heald.demo.monitoring`) instead of
    heald's metric probes, and heald serves its API on loopback to receive their alerts.
    Raises RuntimeError when they are not installed or do not start."""
    if workdir.exists() and any(workdir.iterdir()):
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if with_prometheus:
        from heald.demo.monitoring import installed

        if (problem := installed()) is not None:
            raise RuntimeError(f"--with-prometheus: {problem}")
    ports = {"shop": free_port(), "payments": free_port()}
    build_layout(workdir, ports)
    secret = secrets.token_hex(16) if with_prometheus else None
    from heald.demo.targets import DemoTargets, missing

    targets: DemoTargets | None = None
    why = missing() if with_targets else "not asked for"
    if why is None:
        ports.update(web=free_port(), worker=free_port())
        targets = DemoTargets(workdir, ports)
        targets.start()
    try:
        cfg = demo_config(workdir, ports, metric_probes=not with_prometheus, webhook_secret=secret,
                          targets=targets.config() if targets else None)
        rt = Runtime(cfg)
    except BaseException:
        if targets is not None:
            targets.stop()
        raise
    env = DemoEnv(workdir=workdir, config=cfg, runtime=rt, ports=ports, targets=targets, targets_missing=why)
    if rt.probes is not None:
        rt.probes.on_result = env.record
    rt.start()
    try:
        wait_healthy(f"{env.shop_url}/healthz")
        wait_healthy(f"http://127.0.0.1:{ports['payments']}/healthz")
        if with_prometheus:
            from heald.api.server import ServerThread
            from heald.demo.monitoring import MonitoringStack

            env.server = ServerThread(rt, "127.0.0.1", 0)
            url = env.server.start()
            env.monitoring = MonitoringStack(workdir / "monitoring", ports["shop"],
                                             f"{url}/v1/webhooks/alertmanager", secret or "")
            env.monitoring.start()
        env.traffic = subprocess.Popen([sys.executable, "-m", "heald.demo.traffic", "--base", env.shop_url,
                                        "--rps", str(traffic_rps)], stdout=subprocess.DEVNULL,
                                       stderr=open(workdir / "traffic.log", "ab"))
    except BaseException:
        env.stop()
        raise
    return env
