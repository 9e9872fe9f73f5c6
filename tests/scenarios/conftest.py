"""The scenario harness: real Debian daemons (redis-server, nginx) managed by a real ``heald
serve`` subprocess, watched by Debian's Prometheus, Alertmanager and exporters, on free
loopback ports with every file under the test's ``tmp_path``.

What runs here, from Debian packages only (``scripts/apt-packages.txt``): ``redis-server``,
``nginx``, ``prometheus``, ``prometheus-alertmanager``, ``prometheus-redis-exporter`` (so the
community rule ``RedisDown: redis_up == 0`` is written exactly as rule sets write it) and
``prometheus-blackbox-exporter`` (HTTP probes from outside: ``BlackboxProbeHttpFailure`` on
``probe_http_status_code``). The system instances of these daemons are never touched.

Pieces, each usable alone:

- :class:`Heald`: a generated ``heald.yaml``, ``heald serve`` as a subprocess, an admin API
  token, an HTTP client, waits on incident states, the audit log, the pids of the services it
  manages (``<state_dir>/services/<name>.json``);
- :func:`redis_command` / :func:`nginx_command`: argv that run the daemon in the foreground
  with its configuration in a temporary directory;
- :class:`Monitoring`: Prometheus + Alertmanager (+ the exporters) with the scenario's rules,
  posting to heald's ``/v1/webhooks/alertmanager``;
- :class:`Stopwatch` and :func:`record`: the one-line result of each scenario with its times
  (printed in the terminal summary as ``SCENARIO name: PASS detect=… recover=…``).

Everything started is stopped by its process id (or process group) when the test ends,
including the managed services, which outlive heald by design (:mod:`heald.supervise`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import heald_cmd, make_token, wait_for

#: Debian commands the scenarios need, with the package that provides each.
COMMANDS = {
    "redis-server": "redis-server",
    "nginx": "nginx",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "prometheus-redis-exporter": "prometheus-redis-exporter",
    "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
}

WEBHOOK_SECRET = "scenario-webhook-secret-0123456789"

#: One line per scenario, printed at the end of the run (pytest_terminal_summary).
RESULTS: list[str] = []


def require_commands(*names: str) -> None:
    """Fail (not skip: CI must run these) naming the missing commands and their packages."""
    missing = [n for n in names if shutil.which(n) is None and not Path("/usr/sbin", n).exists()]
    if missing:
        pkgs = " ".join(sorted({COMMANDS.get(n, n) for n in missing}))
        pytest.fail(f"the scenarios need {', '.join(missing)} (scripts/apt-packages.txt): apt-get install {pkgs}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


# -- the daemons ----------------------------------------------------------------------------

def redis_command(dir: Path, port: int) -> list[str]:
    """argv of a redis-server in the foreground on 127.0.0.1:``port``, data in ``dir``, no
    persistence (nothing is written outside ``dir``)."""
    dir.mkdir(parents=True, exist_ok=True)
    return [which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", ""]


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    """Does a redis on 127.0.0.1:``port`` answer PING with PONG (RESP inline command)?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def nginx_conf_text(dir: Path, port: int, upstream_port: int | None = None) -> str:
    """An nginx.conf for one server on 127.0.0.1:``port``: ``/healthz`` answers 200 itself,
    ``/`` proxies to 127.0.0.1:``upstream_port`` (or answers 200 without one)."""
    root = (f"proxy_pass http://127.0.0.1:{upstream_port}; proxy_connect_timeout 1s; proxy_read_timeout 2s;"
            if upstream_port else 'return 200 "hello\\n";')
    temps = "\n".join(f"  {k}_temp_path {dir / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# written by tests/scenarios/conftest.py
user root;
worker_processes 1;
daemon off;
master_process on;
pid {dir / 'nginx.pid'};
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temps}
  server {{
    listen 127.0.0.1:{port};
    location = /healthz {{ return 200 "ok\\n"; }}
    location / {{ {root} }}
  }}
}}
"""


def nginx_command(dir: Path, port: int, upstream_port: int | None = None) -> list[str]:
    """Write ``dir/nginx.conf`` (:func:`nginx_conf_text`) and return the argv that runs nginx
    in the foreground with it (prefix ``dir``, errors on stderr)."""
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "nginx.conf").write_text(nginx_conf_text(dir, port, upstream_port))
    return [which("nginx"), "-p", str(dir), "-c", str(dir / "nginx.conf"), "-e", "stderr"]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status code of GET ``url``, None when nothing answers."""
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group led by ``pid`` (a managed service runs in its own
    session), or to the process alone when it leads none; gone already is fine."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    except PermissionError:
        pass


def alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2:].split()[0] not in ("Z", "X")


@dataclass
class Spawned:
    """A child process the harness started itself (own session, output in ``log``)."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Spawned:
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, **(env or {})})
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        kill_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


APP = Path(__file__).with_name("redis_app.py")


def app_command(port: int, redis_port: int) -> list[str]:
    """argv of the small HTTP app that needs redis (:mod:`tests.scenarios.redis_app`)."""
    return [sys.executable, str(APP), "--port", str(port), "--redis-port", str(redis_port)]


# -- heald -----------------------------------------------------------------------------------

def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def base_config(dir: Path, api_port: int) -> dict[str, Any]:
    """heald.yaml for a scenario: state under ``dir``, the Alertmanager webhook secret, fast
    healing timings (a start period of 1 s, verification of 2 s), production-like budgets."""
    return {
        "state_dir": str(dir / "state"),
        "api": {"port": api_port},
        "log_level": "info",
        "log_format": "json",
        "webhooks": {"alertmanager": {"secret": WEBHOOK_SECRET}},
        "healing": {"group_wait_seconds": 1.0, "retry_delay_seconds": 1.0, "stabilization_seconds": 2.0,
                    "verify_interval_seconds": 0.25, "verify_timeout_seconds": 15.0, "max_attempts": 3},
        "audit": {"checkpoints": False},
        "services": {},
    }


def managed(command: list[str], *probes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A ``services.<name>`` entry heald manages (``command``) with ``probes``."""
    return {"command": command, "probes": list(probes), "start_period_seconds": 1.0, "stop_timeout_seconds": 3.0,
            **extra}


def tcp_probe(port: int, **extra: Any) -> dict[str, Any]:
    return {"type": "tcp", "port": port, "interval_seconds": 0.5, "timeout_seconds": 0.5, "failure_threshold": 2,
            **extra}


def http_probe(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, "interval_seconds": 0.5, "timeout_seconds": 1.0, "failure_threshold": 2,
            **extra}


TERMINAL = {"resolved", "escalated", "failed"}


@dataclass
class Heald:
    """One ``heald serve`` subprocess over a generated ``heald.yaml`` in ``dir``."""

    dir: Path
    config: dict[str, Any]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    seen_pids: dict[str, set[int]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.dir / "heald.yaml"

    @property
    def log(self) -> Path:
        return self.dir / "heald.log"

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    @property
    def database_url(self) -> str:
        return str(self.config.get("database_url") or f"sqlite:///{self.state_dir / 'heald.db'}")

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def make_token(self, role: str = "admin", name: str = "scenario") -> str:
        """An API token in heald's store (made as on the database host, a root identity)."""
        from heald.store import Store

        store = Store(self.database_url)
        try:
            store.migrate()
            return make_token(store, role, name)
        finally:
            store.close()

    def start(self, wait: bool = True) -> Heald:
        """Write the config, start ``heald serve`` and (``wait``) return once /healthz answers."""
        self.write()
        if not self.token:
            self.token = self.make_token()
        self.proc = self.spawn()
        if wait:
            wait_for(lambda: self.healthy() or self.proc.poll() is not None, timeout=60, interval=0.1,
                     what="heald serve to answer /healthz")
            if self.proc.poll() is not None:
                pytest.fail(f"heald serve exited with {self.proc.returncode}; its log ends:\n{self.log_tail()}")
        return self

    def spawn(self, *extra: str) -> subprocess.Popen[bytes]:
        """Start one more ``heald serve`` on this config (the caller owns it)."""
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(heald_cmd("--config", str(self.config_path), "serve", *extra),
                                    stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def healthy(self) -> bool:
        return http_status(f"{self.url}/healthz", timeout=0.5) == 200

    def kill(self) -> None:
        """SIGKILL heald (what a crash or the OOM killer does) and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM heald and wait for it (SIGKILL after 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- the API --
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {self.token}"})

    def get(self, path: str, **params: Any) -> Any:
        with self.client() as c:
            r = c.get(path, params=params)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        with self.client() as c:
            return c.post(path, json=body or {})

    def incidents(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /v1/incidents`` (newest first)."""
        return list(self.get("/v1/incidents", limit=1000, **params))

    def incident(self, incident_id: int) -> dict[str, Any]:
        """``GET /v1/incidents/{id}``: the incident with its signals, decisions, actions,
        verifications, outcomes and timeline (its audit entries)."""
        return dict(self.get(f"/v1/incidents/{incident_id}"))

    def wait_incident(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                      what: str = "an incident", **params: Any) -> dict[str, Any]:
        """The newest incident (a ``GET /v1/incidents`` row) satisfying ``predicate``; fails
        the test after ``timeout`` s with heald's log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for inc in self.incidents(**params):
                    if predicate(inc):
                        return inc
            except (httpx.HTTPError, AssertionError):
                pass
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}; incidents: "
                    f"{[(i['id'], i['service'], i['state'], i.get('closed_reason')) for i in self._safe_incidents()]}"
                    f"\nheald's log ends:\n{self.log_tail(1500)}")

    def wait_state(self, incident_id: int, states: set[str], timeout: float = 30.0) -> dict[str, Any]:
        """The incident once its state is one of ``states``."""
        return self.wait_incident(lambda i: i["id"] == incident_id and i["state"] in states, timeout=timeout,
                                  what=f"incident {incident_id} to reach {sorted(states)}")

    def _safe_incidents(self) -> list[dict[str, Any]]:
        try:
            return self.incidents()
        except (httpx.HTTPError, AssertionError):
            return []

    # -- the audit log, read from heald's store (also what heald did outside any incident) --
    def audit(self, incident_id: int | None = None, event: str | None = None) -> list[Any]:
        """Audit entries (oldest first), optionally of one incident or one event."""
        from heald.store import Store

        store = Store(self.database_url)
        try:
            entries = store.audit_entries(incident_id=incident_id, limit=100_000)
        finally:
            store.close()
        entries = sorted(entries, key=lambda e: e.seq)
        return [e for e in entries if event is None or e.event == event]

    # -- the managed services --
    def service_pid(self, name: str) -> int | None:
        """The pid heald recorded for the managed service ``name`` (None before its start)."""
        try:
            pid = int(json.loads((self.state_dir / "services" / f"{name}.json").read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.seen_pids.setdefault(name, set()).add(pid)
        return pid

    def running_pid(self, name: str) -> int | None:
        """The recorded pid of ``name`` when that process is alive."""
        pid = self.service_pid(name)
        return pid if pid is not None and alive(pid) else None

    def crash(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Kill the managed service's whole process group (what a crash looks like); returns the pid."""
        pid = wait_for(lambda: self.running_pid(name), timeout=30, what=f"{name} to run")
        kill_group(pid, sig)
        wait_for(lambda: not alive(pid), timeout=10, what=f"{name} ({pid}) to die")
        return int(pid)

    def stop_services(self) -> None:
        """Kill every managed service process this harness ever saw (they outlive heald)."""
        for name in self.config.get("services", {}):
            self.service_pid(name)
        for pids in self.seen_pids.values():
            for pid in pids:
                if alive(pid):
                    kill_group(pid, signal.SIGKILL)

    def actions(self, incident_id: int) -> list[dict[str, Any]]:
        return list(self.incident(incident_id)["actions"])


# -- Prometheus + Alertmanager ------------------------------------------------------------------

@dataclass
class Monitoring:
    """Prometheus (1 s scrapes and evaluations) and Alertmanager (group_wait 0 s,
    send_resolved) posting to heald; ``scrape_configs`` and ``rules`` are the scenario's."""

    dir: Path
    heald_port: int
    scrape_configs: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    prometheus_port: int = field(default_factory=free_port)
    alertmanager_port: int = field(default_factory=free_port)
    procs: list[Spawned] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def start(self) -> Monitoring:
        require_commands("prometheus", "prometheus-alertmanager")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "scenario", "interval": "1s",
                                                                           "rules": self.rules}]}, sort_keys=False))
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(self.dir / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager_port}"]}]}]},
            "scrape_configs": self.scrape_configs,
        }, sort_keys=False))
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "heald", "group_by": ["alertname", "service"], "group_wait": "0s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "heald", "webhook_configs": [{
                "url": f"http://127.0.0.1:{self.heald_port}/v1/webhooks/alertmanager", "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": WEBHOOK_SECRET}}}]}],
        }, sort_keys=False))
        self.spawn("alertmanager", [which("prometheus-alertmanager"), f"--config.file={self.dir / 'alertmanager.yml'}",
                                    f"--storage.path={self.dir / 'am'}",
                                    f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                                    "--cluster.listen-address="])
        self.spawn("prometheus", [which("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={self.dir / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{self.prometheus_port}"])
        for p, url in zip(self.procs[-2:], (self.alertmanager_url, self.prometheus_url), strict=True):
            wait_for(lambda u=url, p=p: http_status(f"{u}/-/ready") == 200 or p.proc.poll() is not None,
                     timeout=60, interval=0.1, what=f"{p.name} to be ready")
            if p.proc is not None and p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited; its log ends:\n{p.tail()}")
        return self

    def spawn(self, name: str, argv: list[str]) -> Spawned:
        p = Spawned(name, argv, self.dir / f"{name}.log").start()
        self.procs.append(p)
        return p

    def redis_exporter(self, redis_port: int) -> int:
        """Start Debian's redis_exporter for the redis on ``redis_port``; returns its port."""
        require_commands("prometheus-redis-exporter")
        port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spawn("redis_exporter", [which("prometheus-redis-exporter"), f"-redis.addr=redis://127.0.0.1:{redis_port}",
                                      f"-web.listen-address=127.0.0.1:{port}"])
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/metrics") == 200, timeout=30, what="redis_exporter")
        return port

    def blackbox_exporter(self) -> int:
        """Start Debian's blackbox_exporter with an ``http_2xx`` module; returns its port."""
        require_commands("prometheus-blackbox-exporter")
        port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "blackbox.yml").write_text(yaml.safe_dump({"modules": {"http_2xx": {
            "prober": "http", "timeout": "800ms", "http": {"preferred_ip_protocol": "ip4"}}}}))
        self.spawn("blackbox_exporter", [which("prometheus-blackbox-exporter"),
                                         f"--config.file={self.dir / 'blackbox.yml'}",
                                         f"--web.listen-address=127.0.0.1:{port}"])
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/metrics") == 200, timeout=30, what="blackbox_exporter")
        return port

    def firing(self) -> list[dict[str, Any]]:
        """Alertmanager's active alerts (its v2 API)."""
        return list(httpx.get(f"{self.alertmanager_url}/api/v2/alerts", timeout=5).json())

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def blackbox_job(name: str, exporter_port: int, target: str, service: str) -> dict[str, Any]:
    """A scrape job probing ``target`` through the blackbox exporter, relabelled the way its
    documentation does (``__param_target``, ``instance``), with a ``service`` label."""
    return {"job_name": name, "metrics_path": "/probe", "params": {"module": ["http_2xx"]},
            "static_configs": [{"targets": [target], "labels": {"service": service}}],
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": f"127.0.0.1:{exporter_port}"}]}


# -- faults ----------------------------------------------------------------------------------------

class Flapper:
    """Makes a managed service flap, as an OOM killer or a crashing bug would: every instance
    heald starts is SIGKILLed (its process group) ``lifetimes[i % len]`` seconds after it was
    first seen, until :meth:`stop`. ``kills`` counts what it killed."""

    def __init__(self, heald: Heald, service: str, lifetimes: list[float]):
        import threading

        self.heald, self.service, self.lifetimes = heald, service, lifetimes
        self.kills = 0
        self.instances = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Flapper:
        self._thread.start()
        return self

    def _run(self) -> None:
        seen: set[int] = set()
        while not self._stop.is_set():
            pid = self.heald.running_pid(self.service)
            if pid is not None and pid not in seen:
                seen.add(pid)
                life = self.lifetimes[self.instances % len(self.lifetimes)]
                self.instances += 1
                if self._stop.wait(life):
                    return
                if alive(pid):
                    kill_group(pid, signal.SIGKILL)
                    self.kills += 1
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# -- a notification channel ----------------------------------------------------------------------

class Receiver:
    """A webhook notification channel on loopback (``notifications.channels[]`` of type
    webhook): records every JSON body heald posts to it."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.messages: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    outer.messages.append(json.loads(body))
                except ValueError:
                    outer.messages.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def channel(self) -> dict[str, Any]:
        """The ``notifications.channels[]`` entry that posts here, told about every event."""
        return {"type": "webhook", "name": "scenario", "url": self.url,
                "events": ["escalated", "awaiting_approval", "resolved", "failed"]}

    def about(self, incident_id: int) -> list[dict[str, Any]]:
        """The messages that name incident ``incident_id``."""
        return [m for m in self.messages if isinstance(m.get("incident"), dict) and m["incident"].get("id") == incident_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- results ----------------------------------------------------------------------------------

class Stopwatch:
    """Times of a scenario from its fault (``fault()``), for its one-line result."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}

    def fault(self) -> None:
        self.t0 = time.monotonic()

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic() - self.t0
        return self.marks[name]


@dataclass
class Scenario:
    """What a scenario test gets: a directory, the processes to stop at the end, the stopwatch
    and its result line."""

    name: str
    dir: Path
    healds: list[Heald] = field(default_factory=list)
    monitors: list[Monitoring] = field(default_factory=list)
    spawned: list[Spawned] = field(default_factory=list)
    watch: Stopwatch = field(default_factory=Stopwatch)
    notes: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def heald(self, services: dict[str, Any], **overrides: Any) -> Heald:
        """A :class:`Heald` (not started) with ``services`` and config ``overrides``."""
        port = free_port()
        d = self.dir / "heald"
        cfg = deep_merge(base_config(d, port), overrides)
        cfg["services"] = services
        h = Heald(d, cfg, port)
        self.healds.append(h)
        return h

    def monitoring(self, heald: Heald, scrape_configs: list[dict[str, Any]] | None = None,
                   rules: list[dict[str, Any]] | None = None) -> Monitoring:
        """A :class:`Monitoring` (not started) posting to ``heald``."""
        m = Monitoring(self.dir / "monitoring", heald.port, scrape_configs or [], rules or [])
        self.monitors.append(m)
        return m

    def spawn(self, name: str, argv: list[str]) -> Spawned:
        """Start a process the scenario owns (stopped at the end)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        p = Spawned(name, argv, self.dir / f"{name}.log").start()
        self.spawned.append(p)
        return p

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self) -> None:
        for c in self.cleanups:
            c()
        for h in self.healds:
            h.stop()
        for m in self.monitors:
            m.stop()
        for p in self.spawned:
            p.stop()
        for h in self.healds:
            h.stop_services()


def _fmt(marks: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}s" for k, v in marks.items())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.stash[_REPORT] = rep


_REPORT = pytest.StashKey[Any]()


@pytest.fixture
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    """A :class:`Scenario` in ``tmp_path``; at the end everything it started is stopped and
    its one-line result (pass/fail, times, notes) is recorded for the terminal summary."""
    require_commands("redis-server", "nginx")
    s = Scenario(request.node.name, tmp_path)
    started = time.monotonic()
    try:
        yield s
    finally:
        s.close()
        rep = request.node.stash.get(_REPORT, None)
        verdict = "PASS" if rep is not None and rep.passed else "FAIL"
        why = ""
        if rep is not None and rep.failed:
            msg = str(getattr(rep.longrepr, "reprcrash", None) and rep.longrepr.reprcrash.message or rep.longrepr)
            why = " | " + msg.splitlines()[0][:300] if msg else ""
        RESULTS.append(f"SCENARIO {s.name}: {verdict} wall={time.monotonic() - started:.1f}s {_fmt(s.watch.marks)}"
                       + (" " + "; ".join(s.notes) if s.notes else "") + why)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("scenario results")
        for line in RESULTS:
            terminalreporter.write_line(line)
