"""Verification: did the system recover after a remedy?

:func:`verify` polls checks every ``interval`` seconds until they have all passed continuously
for ``stabilization`` seconds (passed) or ``timeout`` seconds have gone by (failed). A failure
inside the window restarts it. ``recovered_at`` is when the final passing streak began: the
moment the system was healthy again, which is what time-to-recover measures.

Checks are the probes of every service the incident concerns (its service, the services of its
firing signals, and the services depending on these), each with its own
state (a metric probe judges only what happened since verification began); plus, for signals
from sources that report resolution (Alertmanager), that those alerts have resolved; with no
probe at all, that every signal of the incident has been resolved by its source.

Cost: every verification of this process sends its HTTP checks through one shared client
(:func:`http_client`, closed by :func:`close_http_client`), and the check that alerts resolved
reads only the signals that arrived since its last poll (with a short overlap, see
:func:`alert_resolved_check`), not the incident's whole history at every poll.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

import httpx

from heald.config import HealdConfig
from heald.correlate.dependencies import dependents_of
from heald.models import CheckResult, Incident, Signal, SignalStatus, Verification, utcnow
from heald.sources import WEBHOOK_SOURCES
from heald.sources.probes import make_checker, probe_client
from heald.store import Store
from heald.supervise import Supervisor

Check = Callable[[], CheckResult]

#: How long (seconds) the alerts-resolved check keeps re-reading signals it has read: a
#: PostgreSQL transaction can commit a signal with a lower id after one with a higher id was
#: read; SQLite commits in id order.
SIGNAL_OVERLAP_SECONDS = 5.0

_http: httpx.Client | None = None
_http_lock = threading.Lock()


def http_client() -> httpx.Client:
    """The HTTP client every verification of this process shares
    (:func:`heald.sources.probes.probe_client`: thread-safe, no idle connection kept), made at
    the first call; :func:`close_http_client` closes it."""
    global _http
    with _http_lock:
        if _http is None or _http.is_closed:
            _http = probe_client()
        return _http


def close_http_client() -> None:
    """Close the shared verification client (when the engine stops); a later verification
    makes a new one."""
    global _http
    with _http_lock:
        if _http is not None:
            _http.close()
            _http = None


def probe_checks(config: HealdConfig, service: str, supervisor: Supervisor | None,
                 http: httpx.Client | None = None) -> list[Check]:
    """One check per configured probe of ``service`` (a fresh checker each, its HTTP requests
    through ``http``, default :func:`http_client`)."""
    svc = config.services.get(service)
    if svc is None:
        return []
    client = http if http is not None else http_client()

    def make(probe):  # type: ignore[no-untyped-def]
        checker = make_checker(probe, service, supervisor, config, http=client)

        def check() -> CheckResult:
            r = checker()
            return CheckResult(name=f"{service}: {probe.label}", ok=r.ok, detail=r.detail, at=r.at)
        return check

    return [make(p) for p in svc.probes]


def alert_resolved_check(store: Store, incident_id: int, sources: set[str] | None = None,
                         clock: Callable[[], float] = time.monotonic) -> Check:
    """Passes when every fingerprint that fired in the incident (from ``sources`` only, when
    given) has a later resolved signal.

    Stateful: the first call reads the (id, fingerprint, status) of every signal, each later
    call only those above the newest id it had read :data:`SIGNAL_OVERLAP_SECONDS` before
    (re-reading a signal changes nothing: each fingerprint keeps the status of its newest id)."""
    state: dict[str, tuple[int, SignalStatus]] = {}
    seen: deque[tuple[float, int]] = deque()  # (when, the newest id read by then)
    lock = threading.Lock()

    def check() -> CheckResult:
        now = clock()
        with lock:
            while len(seen) > 1 and seen[1][0] <= now - SIGNAL_OVERLAP_SECONDS:
                seen.popleft()
            after = seen[0][1] if seen and seen[0][0] <= now - SIGNAL_OVERLAP_SECONDS else 0
            newest = seen[-1][1] if seen else 0
            for row in store.signal_statuses(incident_id, after_id=after):
                newest = max(newest, row.id)
                if sources is None or row.source in sources:
                    fp = row.fingerprint or ""
                    if fp not in state or state[fp][0] < row.id:
                        state[fp] = (row.id, row.status)
            seen.append((now, newest))
            firing = sorted(fp for fp, (_, st) in state.items() if st == SignalStatus.firing)
        return CheckResult(name="alerts resolved", ok=not firing,
                           detail="all resolved" if not firing else f"{len(firing)} still firing", at=utcnow())
    return check


def affected_services(incident: Incident, signals: list[Signal], config: HealdConfig) -> list[str]:
    """The incident's service, every other service a firing signal of it names, and the
    services that depend on these (the dependency map): healing payments is verified only when
    the shop's checkouts work again."""
    return _with_dependents(incident, [s.service for s in signals if s.status == SignalStatus.firing and s.service],
                            config)


def _with_dependents(incident: Incident, firing_services: list[str], config: HealdConfig) -> list[str]:
    """The incident's service, then ``firing_services``, then their dependents, each once."""
    out = [incident.service] if incident.service else []
    out.extend(svc for svc in dict.fromkeys(firing_services) if svc not in out)
    for svc in list(out):
        out.extend(d for d in dependents_of(config, svc) if d not in out)
    return out


def checks_for(incident: Incident, config: HealdConfig, store: Store, supervisor: Supervisor | None) -> list[Check]:
    """The checks that verify ``incident`` (see the module docstring); a CI fix is verified by
    its pushed branch passing in the sandbox (:mod:`heald.ci.verify`)."""
    from heald.ci.verify import ci_checks

    ci = ci_checks(incident, config, store)
    if ci:
        return ci
    kinds = store.signal_kinds(incident.id)  # not every signal: an incident can hold 100k
    services = _with_dependents(incident, [svc for _, svc, st in kinds if st == SignalStatus.firing and svc], config)
    checks = [c for svc in services for c in probe_checks(config, svc, supervisor)]
    if not checks:
        return [alert_resolved_check(store, incident.id)]
    resolving = {src for src, _, _ in kinds if getattr(WEBHOOK_SOURCES.get(src), "sends_resolved", False)}
    if resolving:
        checks.append(alert_resolved_check(store, incident.id, resolving))
    return checks


def verify(incident_id: int, checks: list[Check], *, stabilization: float, interval: float, timeout: float,
           action_id: int | None = None, sleep: Callable[[float], None] = time.sleep) -> Verification:
    """Poll ``checks`` (see the module docstring); all durations in seconds.

    Keeps at most the last 200 check results. Never raises: a check that raises fails.
    """
    started = utcnow()
    t0 = time.monotonic()
    streak_start: datetime | None = None
    streak_t = 0.0
    history: list[CheckResult] = []
    reason = ""
    while True:
        results = []
        for check in checks:
            try:
                results.append(check())
            except Exception as exc:  # a broken check is a failed check, with its reason kept
                results.append(CheckResult(name=getattr(check, "__name__", "check"), ok=False,
                                           detail=f"check raised {exc.__class__.__name__}: {exc}", at=utcnow()))
        history.extend(results)
        history = history[-200:]
        now = time.monotonic()
        if all(r.ok for r in results):
            if streak_start is None:
                streak_start, streak_t = results[0].at if results else utcnow(), now
            if now - streak_t >= stabilization:
                return Verification(incident_id=incident_id, action_id=action_id, passed=True,
                                    reason=_passed_reason(results, now - streak_t, stabilization),
                                    checks=history, recovered_at=streak_start, started_at=started, finished_at=utcnow())
        else:
            failing = [r for r in results if not r.ok]
            reason = "; ".join(f"{r.name}: {r.detail}" for r in failing)
            streak_start = None
        if now - t0 >= timeout:
            return Verification(incident_id=incident_id, action_id=action_id, passed=False,
                                reason=f"not stable within {timeout:g} s; last failure: {reason or 'none'}",
                                checks=history, recovered_at=None, started_at=started, finished_at=utcnow())
        sleep(interval)


def _passed_reason(results: list[CheckResult], held_s: float, stabilization: float) -> str:
    """``the check passed (…)`` / ``all 3 checks passed, stable for 30.0 s``: no "all 1 checks",
    no stability claim where there is no stabilization window."""
    what = f"the check passed ({results[0].name}: {results[0].detail[:200]})" if len(results) == 1 \
        else f"all {len(results)} checks passed"
    return what + (f", stable for {held_s:.1f} s" if stabilization > 0 else "")
