"""``heald demo``: start a real system under heald, inject faults, report how each was healed.

The demo builds a configuration in a work directory (SQLite store, the demo shop as a managed
service with an HTTP probe), starts heald's runtime in this process, injects each fault, waits
until heald ends the incident, and reports per fault: time to detect and time to recover
(seconds from the moment the fault was injected), the diagnosis, the remedy and the outcome.
While it runs, it prints what heald decided and why, read from the audit log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from heald.config import HealdConfig, ProbeConfig, ServiceConfig
from heald.engine import Runtime
from heald.models import Incident, utcnow


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoEnv:
    """The running demo system: work directory, config, runtime, ports."""

    workdir: Path
    config: HealdConfig
    runtime: Runtime
    ports: dict[str, int]

    def pid(self, service: str) -> int:
        proc = self.runtime.supervisor.get(service)
        ident = proc.identity() if proc else None
        if ident is None:
            raise RuntimeError(f"demo service {service} is not running")
        return ident.pid


@dataclass(frozen=True)
class Fault:
    """A fault the demo can inject. ``inject`` breaks the system and returns a description;
    ``expect_incident`` False means heald should take no action (a false alarm)."""

    name: str
    description: str
    inject: Callable[[DemoEnv], str]
    expect_incident: bool = True


def _kill(service: str) -> Callable[[DemoEnv], str]:
    def inject(env: DemoEnv) -> str:
        pid = env.pid(service)
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL {service} (pid {pid})"
    return inject


FAULTS: dict[str, Fault] = {
    f.name: f for f in [
        Fault("process-crash", "the shop's process is killed with SIGKILL", _kill("shop")),
    ]
}


@dataclass
class DemoResult:
    """One fault's row of the demo table; times in seconds from injection."""

    fault: str
    injected: str
    incident_id: int | None = None
    time_to_detect_s: float | None = None
    diagnosis: str | None = None
    confidence: float | None = None
    remedy: str | None = None
    time_to_recover_s: float | None = None
    outcome: str = "no incident"
    expected: bool = False
    reason: str = ""
    decisions: list[str] = field(default_factory=list)


def demo_config(workdir: Path, ports: dict[str, int]) -> HealdConfig:
    """The demo's configuration: fast probes and short windows so a demo run takes seconds."""
    py = sys.executable
    shop = ServiceConfig(
        command=[py, "-m", "heald.demo.shop", "--port", str(ports["shop"]), "--starts-file", str(workdir / "shop.starts")],
        probes=[ProbeConfig(type="http", name="shop /healthz", url=f"http://127.0.0.1:{ports['shop']}/healthz",
                            interval_seconds=0.2, timeout_seconds=0.5, failure_threshold=2)],
    )
    cfg = HealdConfig.model_validate({
        "state_dir": str(workdir / "state"), "environment": "demo",
        "services": {"shop": shop.model_dump()},
        "healing": {"group_wait_seconds": 0.1, "cooldown_seconds": 1.0, "stabilization_seconds": 1.0,
                    "verify_interval_seconds": 0.1, "verify_timeout_seconds": 20.0, "max_attempts": 3},
    })
    cfg.resolve_paths(workdir)
    return cfg


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


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else round(max(0.0, (later - earlier).total_seconds()), 3)


def run_fault(env: DemoEnv, fault: Fault, say: Callable[[str], None], timeout: float = 60.0) -> DemoResult:
    """Inject ``fault``, follow heald's audit log until the incident ends, return its row."""
    store = env.runtime.store
    last_incident = max((i.id for i in store.list_incidents(limit=1)), default=0)
    after_seq = store.last_audit_seq()
    t0 = utcnow()
    injected = fault.inject(env)
    say(f"[bold]{fault.name}[/]: injected — {injected}")
    result = DemoResult(fault=fault.name, injected=injected)
    deadline = time.monotonic() + (timeout if fault.expect_incident else 5.0)
    incident: Incident | None = None
    while time.monotonic() < deadline:
        for entry in store.audit_entries(after_seq=after_seq):
            after_seq = entry.seq
            if entry.incident_id is not None and entry.incident_id > last_incident:
                say(f"  [dim]#{entry.incident_id}[/] {_describe(entry.event, entry.reason, entry.details)}")
                if entry.event == "gate.decided":
                    result.decisions.append(entry.reason)
        new = [i for i in store.list_incidents(limit=20) if i.id > last_incident]
        if new:
            incident = store.get_incident(min(i.id for i in new))
            if incident.state.terminal:
                break
        time.sleep(0.05)
    if incident is None:
        result.outcome = "no action"
        result.expected = not fault.expect_incident
        result.reason = "no incident was opened" if not fault.expect_incident else f"no incident within {timeout:g} s"
        return result
    diagnoses = store.diagnoses_for(incident.id)
    actions = store.actions_for(incident.id)
    result.incident_id = incident.id
    result.time_to_detect_s = _seconds(incident.detected_at, t0)
    result.time_to_recover_s = _seconds(incident.recovered_at, t0)
    result.diagnosis = diagnoses[-1].category if diagnoses else None
    result.confidence = diagnoses[-1].confidence if diagnoses else None
    result.remedy = actions[-1].remedy if actions else None
    result.outcome = incident.state.value
    result.reason = incident.closed_reason or ""
    result.expected = fault.expect_incident and incident.state.value == "resolved"
    return result


def _describe(event: str, reason: str, details: dict[str, Any]) -> str:
    if event == "incident.transition":
        return f"→ {details.get('to')}: {reason}"
    if event == "diagnosis.made":
        return f"diagnosis: {details.get('category')} (confidence {details.get('confidence')}, {details.get('reasoner')}) — {reason}"
    if event == "gate.decided":
        return f"gate: {details.get('decision')} — {reason}"
    return f"{event}: {reason}"


def start_demo(workdir: Path) -> DemoEnv:
    """Start heald's runtime over the demo system in ``workdir`` and wait until it is healthy."""
    ports = {"shop": free_port()}
    cfg = demo_config(workdir, ports)
    rt = Runtime(cfg)
    rt.start()
    wait_healthy(f"http://127.0.0.1:{ports['shop']}/healthz")
    return DemoEnv(workdir=workdir, config=cfg, runtime=rt, ports=ports)


def run_demo(fault_names: list[str], *, console: Console | None = None, workdir: Path | None = None,
             keep: bool = False, timeout: float = 60.0) -> list[DemoResult]:
    """Run the named faults in order (all when empty). ``console`` receives progress (None:
    silent). Raises KeyError for an unknown fault name."""
    names = fault_names or list(FAULTS)
    for n in names:
        if n not in FAULTS:
            raise KeyError(f"unknown fault {n!r}; known: {', '.join(FAULTS)}")
    say: Callable[[str], None] = console.print if console else (lambda _m: None)
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="heald-demo-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    env = start_demo(wd)
    say(f"heald is watching the demo system in [cyan]{wd}[/]")
    try:
        results = []
        for n in names:
            results.append(run_fault(env, FAULTS[n], say, timeout))
            wait_healthy(f"http://127.0.0.1:{env.ports['shop']}/healthz", timeout=30)
        return results
    finally:
        env.runtime.stop(stop_services=True)
        if own_dir and not keep:
            shutil.rmtree(wd, ignore_errors=True)


def results_json(results: list[DemoResult]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items()} for r in results]
