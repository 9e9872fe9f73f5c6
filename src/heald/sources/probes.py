"""Active checks: HTTP and TCP probes and process liveness.

:func:`run_probe` runs one check once. :class:`ProbeRunner` runs every probe of every
configured service on its interval in a thread of its own; after ``failure_threshold``
consecutive failures it emits one firing signal (``kind=probe_failed``) whose ``starts_at`` is
the time of the first failure of the streak, and on the first success after that one resolved
signal. A failure streak shorter than the threshold emits nothing (a false alarm).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx

from heald.config import HealdConfig, ProbeConfig
from heald.correlate.fingerprint import fingerprint
from heald.models import Severity, Signal, SignalStatus, utcnow
from heald.supervise import Supervisor


@dataclass(frozen=True)
class ProbeResult:
    """One check: ``ok``, a human-readable ``detail``, ``latency_s`` (seconds), when (UTC)."""

    ok: bool
    detail: str
    latency_s: float
    at: datetime


def run_probe(probe: ProbeConfig, service: str, supervisor: Supervisor | None = None) -> ProbeResult:
    """Run ``probe`` once against ``service``. Never raises: a failure is a result."""
    at = utcnow()
    t0 = time.monotonic()
    try:
        if probe.type == "http":
            assert probe.url is not None
            resp = httpx.get(probe.url, timeout=probe.timeout_seconds, follow_redirects=False,
                             headers={"user-agent": "heald-probe", "connection": "close"})
            ok = resp.status_code in probe.expect_status
            detail = f"HTTP {resp.status_code}"
        elif probe.type == "tcp":
            assert probe.port is not None
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout_seconds):
                pass
            ok, detail = True, "connected"
        else:
            proc = supervisor.get(service) if supervisor else None
            if proc is None:
                ok, detail = False, "not a managed service"
            else:
                ok = proc.is_running()
                detail = proc.exit_description()
    except httpx.ConnectError as exc:
        ok, detail = False, f"connection refused or unreachable ({exc})"
    except httpx.TimeoutException:
        ok, detail = False, f"timed out after {probe.timeout_seconds:g} s"
    except httpx.HTTPError as exc:
        ok, detail = False, f"HTTP error: {exc.__class__.__name__}: {exc}"
    except ConnectionRefusedError:
        ok, detail = False, "connection refused"
    except (TimeoutError, socket.timeout):
        ok, detail = False, f"timed out after {probe.timeout_seconds:g} s"
    except OSError as exc:
        ok, detail = False, f"{exc.__class__.__name__}: {exc}"
    return ProbeResult(ok, detail, time.monotonic() - t0, at)


def probe_signal(service: str, probe: ProbeConfig, status: SignalStatus, result: ProbeResult,
                 first_failure: datetime, failures: int, supervisor: Supervisor | None) -> Signal:
    """The signal a probe emits when its failure threshold is reached (firing) or when it
    passes again (resolved). Managed services add ``process_state`` and ``process_exit``."""
    labels = {"alertname": "ProbeFailed", "service": service, "probe": probe.label}
    annotations = {"detail": result.detail, "consecutive_failures": str(failures)}
    proc = supervisor.get(service) if supervisor else None
    if proc is not None:
        running = proc.is_running()
        labels["process_state"] = "running" if running else "exited"
        annotations["process_exit"] = proc.exit_description()
    if status == SignalStatus.firing:
        summary = f"{probe.label} failed {failures}× in a row: {result.detail}"
    else:
        summary = f"{probe.label} passes again: {result.detail}"
    sig = Signal(source="probe", kind="probe_failed", service=service, status=status,
                 severity=Severity.critical, summary=summary, labels=labels, annotations=annotations,
                 starts_at=first_failure, ends_at=result.at if status == SignalStatus.resolved else None)
    sig.fingerprint = fingerprint(sig, fields=("alertname", "service", "probe"))
    return sig


class ProbeRunner:
    """Runs every probe of every service in ``config`` on its interval; calls ``emit`` with the
    signals (see the module docstring). ``on_result`` sees every single result."""

    def __init__(self, config: HealdConfig, supervisor: Supervisor | None, emit: Callable[[Signal], object],
                 on_result: Callable[[str, ProbeConfig, ProbeResult], None] | None = None):
        self.config = config
        self.supervisor = supervisor
        self.emit = emit
        self.on_result = on_result
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for service, svc in self.config.services.items():
            for probe in svc.probes:
                t = threading.Thread(target=self._loop, args=(service, probe), daemon=True,
                                     name=f"probe-{service}-{probe.label}")
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _loop(self, service: str, probe: ProbeConfig) -> None:
        failures = 0
        first_failure: datetime | None = None
        firing = False
        next_at = time.monotonic()
        while not self._stop.is_set():
            result = run_probe(probe, service, self.supervisor)
            if self.on_result:
                self.on_result(service, probe, result)
            if result.ok:
                if firing:
                    self._emit(probe_signal(service, probe, SignalStatus.resolved, result,
                                            first_failure or result.at, failures, self.supervisor))
                failures, first_failure, firing = 0, None, False
            else:
                failures += 1
                first_failure = first_failure or result.at
                if failures >= probe.failure_threshold and not firing:
                    firing = True
                    self._emit(probe_signal(service, probe, SignalStatus.firing, result, first_failure,
                                            failures, self.supervisor))
            next_at += probe.interval_seconds
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow probe: skip missed ticks rather than bursting
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def _emit(self, signal: Signal) -> None:
        try:
            self.emit(signal)
        except Exception:  # a failed ingest must not kill the probe loop; it is logged by emit's owner
            import structlog

            structlog.get_logger("heald.probes").exception("probe.emit_failed", service=signal.service)
