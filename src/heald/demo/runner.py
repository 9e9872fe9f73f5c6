"""``heald demo``: start a real system under heald, inject faults, report how each was healed.

:func:`run_demo` builds and starts the demo system (:mod:`heald.demo.system`), then for each
fault (:mod:`heald.demo.faults`): waits until the system is quiet (every probe passing, no
incident open), injects the fault, follows heald's audit log until heald has healed it (an
incident resolved by a remedy) or given up, and reports: time to detect and time to recover
(seconds from the moment the fault was injected, and from the first failing observation,
which is the incident's own measure), the diagnosis, the remedy and what it targeted, the
outcome, and whether that is what the fault called for. While it runs it prints what heald
decided and why.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from heald.demo.faults import FAULTS, Fault
from heald.demo.system import DemoEnv, free_port, start_demo, wait_healthy
from heald.models import Action, Incident, utcnow

__all__ = ["FAULTS", "DemoEnv", "DemoResult", "Fault", "free_port", "results_json", "run_demo", "run_fault",
           "serve_dashboard", "start_demo", "wait_healthy", "wait_quiet", "wait_for_interrupt"]

#: Seconds ``false-alarm`` is watched for an incident that should not come.
FALSE_ALARM_WATCH_SECONDS = 4.0


@dataclass
class DemoResult:
    """One fault's row of the demo table. ``injected_at`` is when (epoch seconds);
    ``time_to_detect_s``/``time_to_recover_s`` are seconds from the injection;
    ``incident_time_to_*`` from the first failing observation (the incident's own figures)."""

    fault: str
    injected: str
    injected_at: float = 0.0
    incident_id: int | None = None
    time_to_detect_s: float | None = None
    diagnosis: str | None = None
    confidence: float | None = None
    remedy: str | None = None
    target: str | None = None
    time_to_recover_s: float | None = None
    outcome: str = "no incident"
    expected: bool = False
    reason: str = ""
    incident_time_to_detect_s: float | None = None
    incident_time_to_recover_s: float | None = None
    attempts: int = 0
    other_incidents: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else round(max(0.0, (later - earlier).total_seconds()), 3)


def _describe(event: str, reason: str, details: dict[str, Any]) -> str:
    if event == "incident.transition":
        return f"→ {details.get('to')}: {reason}"
    if event == "diagnosis.made":
        return f"diagnosis: {details.get('category')} (confidence {details.get('confidence')}, {details.get('reasoner')}) — {reason}"
    if event == "gate.decided":
        return f"gate: {details.get('decision')} — {reason}"
    return f"{event}: {reason}"


def wait_quiet(env: DemoEnv, timeout: float = 60.0, settle: float = 0.75) -> None:
    """Wait until every probe passes and no incident is open, continuously for ``settle``
    seconds. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < deadline:
        if env.healthy():
            since = since or time.monotonic()
            if time.monotonic() - since >= settle:
                return
        else:
            since = None
        time.sleep(0.05)
    failing = [f"{svc} {label}: {r.detail}" for (svc, label), r in env.results.items() if not r.ok]
    raise TimeoutError(f"the demo system did not settle within {timeout:g} s: {'; '.join(failing) or 'an incident is open'}")


def target_text(action: Action) -> str:
    """What a remedy acted on, for a human: ``payments``, ``PUT /admin/flags {"slow_mode": false}``,
    ``shop: revert 1a2b3c4d5e``."""
    p = action.params
    if action.remedy == "http_request":
        body = f" {json.dumps(p['body'])}" if p.get("body") is not None else ""
        return f"{p.get('method', 'POST')} {urlsplit(str(p.get('url', ''))).path}{body}"
    extra = {"git_revert": lambda: f": revert {str(p.get('commit'))[:10]}",
             "rollback_release": lambda: f": to {p.get('to') or 'the previous release'}",
             "cleanup_path": lambda: f": {p.get('path')}"}.get(action.remedy, lambda: "")
    what = next((str(p[k]) for k in ("service", "container", "unit", "name") if p.get(k)), "")
    if action.remedy == "rollback_container_image":
        return f"{what}: to {p.get('to') or 'the previous image'}"
    return f"{what}{extra()}"


def _contains(params: Any, expected: Any) -> bool:
    """Does ``params`` hold ``expected`` (a subset, recursively for objects)?"""
    if isinstance(expected, dict):
        return isinstance(params, dict) and all(_contains(params.get(k), v) for k, v in expected.items())
    return bool(params == expected)


def _healing_incident(incidents: list[Incident], acted: set[int]) -> Incident | None:
    """The incident heald healed (or tried to): the first with an action, else the first."""
    return next((i for i in incidents if i.id in acted), incidents[0] if incidents else None)


def run_fault(env: DemoEnv, fault: Fault, say: Callable[[str], None], timeout: float = 60.0) -> DemoResult:
    """Wait for quiet, inject ``fault``, follow heald until it healed it (or gave up, or
    ``timeout`` seconds passed), and return its row."""
    wait_quiet(env)
    store = env.runtime.store
    last_incident = max((i.id for i in store.list_incidents(limit=1)), default=0)
    after_seq = store.last_audit_seq()
    memo: dict[str, Any] = {}
    t0 = utcnow()
    injected = fault.inject(env, memo)
    say(f"[bold]{fault.name}[/]: injected — {escape(injected)}")
    result = DemoResult(fault=fault.name, injected=injected, injected_at=t0.timestamp())
    started = time.monotonic()
    limit = timeout if fault.expect_incident else FALSE_ALARM_WATCH_SECONDS
    incidents: list[Incident] = []
    acted: set[int] = set()
    while time.monotonic() - started < limit:
        for entry in store.audit_entries(after_seq=after_seq):
            after_seq = entry.seq
            if entry.incident_id is not None and entry.incident_id > last_incident:
                say(f"  [dim]#{entry.incident_id}[/] {escape(_describe(entry.event, entry.reason, entry.details))}")
                if entry.event == "gate.decided":
                    result.decisions.append(entry.reason)
                if entry.event == "action.started":
                    acted.add(entry.incident_id)
        incidents = sorted((i for i in store.list_incidents(limit=50) if i.id > last_incident), key=lambda i: i.id)
        finished = incidents and all(i.state.terminal or i.state.value == "needs_attention" for i in incidents)
        if finished and (acted or any(i.state.value != "resolved" for i in incidents)):
            break
        time.sleep(0.05)
    main = _healing_incident(incidents, acted)
    if main is None:
        result.outcome = "no action"
        result.reason = "no incident was opened" if not fault.expect_incident else f"no incident within {timeout:g} s"
    else:
        actions = store.actions_for(main.id)
        diagnoses = store.diagnoses_for(main.id)
        result.incident_id = main.id
        result.time_to_detect_s = _seconds(main.detected_at, t0)
        result.time_to_recover_s = _seconds(main.recovered_at, t0)
        result.incident_time_to_detect_s = round(main.time_to_detect_s, 3)
        ttr = main.time_to_recover_s
        result.incident_time_to_recover_s = round(ttr, 3) if ttr is not None else None
        result.diagnosis = diagnoses[-1].category if diagnoses else None
        result.confidence = diagnoses[-1].confidence if diagnoses else None
        result.remedy = actions[-1].remedy if actions else None
        result.target = target_text(actions[-1]) if actions else None
        settled = main.state.terminal or main.state.value == "needs_attention"  # ended, or handed over to a human
        result.outcome = main.state.value if (settled or not fault.expect_incident) else f"{main.state.value} (timed out)"
        result.reason = main.closed_reason or ""
        result.attempts = main.attempts
        result.other_incidents = [f"#{i.id} {i.state.value}: {i.closed_reason or i.title}" for i in incidents if i is not main]
        result.problems = fault.check(env, memo, actions) if fault.check else []
    if not fault.expect_incident:
        result.problems = (fault.check(env, memo, []) if fault.check else []) + \
            ([f"heald opened incident #{main.id} for a false alarm"] if main is not None else [])
        result.expected = main is None and not result.problems
    else:
        actions = store.actions_for(main.id) if main is not None else []
        last = actions[-1] if actions else None
        right_remedy = last is not None and last.remedy == fault.remedy and _contains(last.params, fault.target)
        if main is not None and last is not None and not right_remedy:
            result.problems.append(f"healed by {last.remedy}({result.target}), expected {fault.remedy} {fault.target}")
        result.expected = main is not None and main.state.value == "resolved" and right_remedy and not result.problems
    for p in result.problems:
        say(f"  [red]problem:[/] {escape(p)}")
    return result


def run_demo(fault_names: list[str], *, console: Console | None = None, workdir: Path | None = None,
             keep: bool = False, timeout: float = 60.0, on_start: Callable[[DemoEnv], None] | None = None,
             before_stop: Callable[[DemoEnv, list[DemoResult]], None] | None = None,
             with_prometheus: bool = False) -> list[DemoResult]:
    """Run the named faults in order (all when empty) on one demo system. ``console`` receives
    progress (None: silent). ``on_start`` is called once the system runs, before the first
    fault, and ``before_stop`` after the last, before the system stops (``heald demo --serve``
    serves the dashboard between them). ``with_prometheus``: a real Prometheus and
    Alertmanager watch the shop's metrics and alert heald (see :func:`start_demo`). Raises
    KeyError for an unknown fault name, RuntimeError when the monitoring stack cannot start."""
    names = fault_names or list(FAULTS)
    for n in names:
        if n not in FAULTS:
            raise KeyError(f"unknown fault {n!r}; known: {', '.join(FAULTS)}")
    say: Callable[[str], None] = console.print if console else (lambda _m: None)
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="heald-demo-")) if workdir is None else workdir
    env = start_demo(wd, with_prometheus=with_prometheus, with_targets=any(FAULTS[n].needs_targets for n in names))
    say(f"heald is watching the demo system in [cyan]{wd}[/]: the shop on {env.shop_url}, "
        f"payments on port {env.ports['payments']}")
    if env.monitoring is not None:
        say(f"Prometheus on {env.monitoring.prometheus_url} and Alertmanager on {env.monitoring.alertmanager_url} "
            f"watch the shop's metrics and alert heald at {env.server.url}/v1/webhooks/alertmanager")
    try:
        if on_start is not None:
            on_start(env)
        results = [run_fault(env, FAULTS[n], say, timeout) if env.targets is not None or not FAULTS[n].needs_targets
                   else DemoResult(fault=n, injected="", outcome="skipped", expected=fault_names is None,
                                   reason=f"needs podman: {env.targets_missing}")
                   for n in names]
        if before_stop is not None:
            before_stop(env, results)
        return results
    finally:
        env.stop()
        if own_dir and not keep:
            shutil.rmtree(wd, ignore_errors=True)


def serve_dashboard(env: DemoEnv, host: str = "127.0.0.1", port: int = 0) -> tuple[str, str]:
    """Serve heald's API and dashboard over the demo's runtime on ``host:port`` (port 0: any
    free port; the server the demo already runs for Alertmanager is reused) and create a
    one-time admin token (identity ``demo-admin``) to sign in with. Returns (base URL, token).
    Raises RuntimeError when the server does not start (the port is taken)."""
    from heald.api.server import ServerThread
    from heald.auth import issue_token
    from heald.models import Role

    if env.server is None:
        env.server = ServerThread(env.runtime, host, port)
        env.server.start()
    _, token = issue_token(env.runtime.store, name="demo-admin", role=Role.admin, created_by="heald demo --serve",
                           sponsor=None)
    return env.server.url, token


def wait_for_interrupt(poll: float = 0.5) -> None:
    """Block until Ctrl-C (SIGINT) or SIGTERM; returns normally then."""
    import signal
    import threading

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(poll):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def results_json(results: list[DemoResult]) -> list[dict[str, Any]]:
    """The results as JSON-ready objects (times in seconds)."""
    return [asdict(r) for r in results]
