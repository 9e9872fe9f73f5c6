"""Active checks: HTTP and TCP probes, process liveness, metric thresholds, disk quotas and
PromQL expressions against an existing Prometheus (:mod:`heald.sources.promql`).

:func:`make_checker` gives the check of one probe as a callable (a metric probe keeps the
scrapes of its window, so one checker must be reused from check to check); :func:`run_probe`
runs one check once. :class:`ProbeRunner` runs every probe of every configured service on its
interval in a thread of its own; after ``failure_threshold`` consecutive failures it emits one
firing signal (``kind=probe_failed``) whose ``starts_at`` is the time of the first failure of
the streak, and on the first success after that one resolved signal. A failure streak shorter
than the threshold emits nothing (a false alarm). A result without data (a metric that could
not be scraped or had too few events in its window) neither fails nor recovers. Given a store,
the runner keeps where each probe stands in it (:mod:`heald.store.probe_state`) and goes on
from there after a restart: a signal firing when heald stopped resolves at the first pass after.

Metric probes read the Prometheus text exposition format (version 0.0.4, as served by
prometheus-client and every exporter; parsed with ``prometheus_client.parser``) and evaluate
as Prometheus would: counters by their increase over the window (a value that drops is a
counter reset), histograms by ``histogram_quantile`` over the bucket increases.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from heald.config import HealdConfig, ProbeConfig
from heald.correlate.fingerprint import fingerprint
from heald.matchers import matches_all, parse_matcher
from heald.models import Severity, Signal, SignalStatus, utcnow
from heald.store import Store
from heald.store.probe_state import ProbeState, load_probe_states, save_probe_state
from heald.supervise import Supervisor

#: What a probe's HTTP client sends as its user agent.
USER_AGENT = "heald-probe"


def probe_client() -> httpx.Client:
    """A new HTTP client for probes, to share between every check of one owner (a
    :class:`ProbeRunner`, a verification): building one costs about 18 ms of CPU (its TLS
    context), a request on a shared one about 0.3 ms. Thread-safe. It keeps no idle
    connection (every probe opens its own, so a probe still sees a service that stopped
    accepting connections) and follows no redirect; each request gives its own timeout. The
    owner closes it (:meth:`httpx.Client.close`)."""
    return httpx.Client(follow_redirects=False, headers={"user-agent": USER_AGENT},
                        limits=httpx.Limits(max_keepalive_connections=0))

#: The alertname of a probe's signals when the probe names none.
DEFAULT_ALERTNAMES = {"http": "ProbeFailed", "tcp": "ProbeFailed", "process": "ProbeFailed",
                      "metric": "MetricThresholdExceeded", "disk": "DiskQuotaExceeded",
                      "promql": "PromQLThresholdExceeded", "container": "ContainerDown", "systemd": "UnitDown"}


@dataclass(frozen=True)
class ProbeResult:
    """One check: ``ok``, a human-readable ``detail``, ``latency_s`` (seconds), and ``at``,
    when its outcome was known (UTC; a failure's first observation is when it was seen).

    ``no_data`` marks a check that could not judge (``ok`` is then True); ``value`` is the
    measured figure of a metric or disk probe (bytes for disk); ``labels`` are the labels of
    the metric group the value belongs to (its ``by`` labels).
    """

    ok: bool
    detail: str
    latency_s: float
    at: datetime
    no_data: bool = False
    value: float | None = None
    labels: dict[str, str] = field(default_factory=dict)


Checker = Callable[[], ProbeResult]


def make_checker(probe: ProbeConfig, service: str, supervisor: Supervisor | None = None,
                 config: HealdConfig | None = None, http: httpx.Client | None = None) -> Checker:
    """The check of ``probe`` as a callable that never raises. Metric, container and systemd
    probes are stateful: call the same checker again to evaluate rates over its window or to
    see restarts between two checks. Container and systemd probes need ``config`` (the targets
    they name, :mod:`heald.sources.targets`); without it they fail with that reason. HTTP,
    metric and PromQL probes send their requests through ``http`` (:func:`probe_client`, owned
    and closed by the caller); without it, each check makes and closes a client of its own."""
    if probe.type in ("container", "systemd"):
        from heald.sources.targets import ContainerProbe, SystemdProbe

        if config is None:
            return lambda: ProbeResult(False, f"a {probe.type} probe needs heald's configuration", 0.0, utcnow())
        read = ContainerProbe(probe, config) if probe.type == "container" else SystemdProbe(probe, config)

        def check() -> ProbeResult:
            t0 = time.monotonic()
            r = read()
            return ProbeResult(r.ok, r.detail, time.monotonic() - t0, utcnow(), no_data=r.no_data, value=r.value,
                               labels=r.labels)
        return check
    if probe.type == "metric":
        return MetricProbe(probe, http=http)
    if probe.type == "promql":
        from heald.sources.promql import PromQLProbe

        return PromQLProbe(probe, http=http)
    return lambda: run_probe(probe, service, supervisor, http)


def run_probe(probe: ProbeConfig, service: str, supervisor: Supervisor | None = None,
              http: httpx.Client | None = None) -> ProbeResult:
    """Run ``probe`` once against ``service`` (HTTP through ``http`` when given, see
    :func:`make_checker`). Never raises: a failure is a result. (A metric probe run once can
    judge gauges only; rates need :func:`make_checker`.)"""
    if probe.type in ("metric", "promql", "container", "systemd"):
        return make_checker(probe, service, supervisor, http=http)()
    t0 = time.monotonic()
    value: float | None = None
    try:
        if probe.type == "http":
            assert probe.url is not None
            with _client(http) as client:
                resp = client.get(probe.url, timeout=probe.timeout_seconds, headers={"connection": "close"})
            ok = resp.status_code in probe.expect_status
            detail = f"HTTP {resp.status_code}" + ("" if ok else _error_code(resp))
        elif probe.type == "tcp":
            assert probe.port is not None
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout_seconds):
                pass
            ok, detail = True, "connected"
        elif probe.type == "disk":
            assert probe.path is not None and probe.max_bytes is not None
            used, files, complete = disk_usage(probe.path, probe.max_files)
            value = float(used)
            ok = used <= probe.max_bytes
            detail = (f"disk usage of {probe.path} is {_mb(used)} in {files} files, "
                      f"{'above' if not ok else 'within'} its quota of {_mb(probe.max_bytes)}")
            if not complete:
                detail += f" (counted the first {probe.max_files} files only)"
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
    except RuntimeError as exc:  # httpx: the shared client was closed (its owner stopped)
        ok, detail = False, f"not probed: {exc}"
    except ConnectionRefusedError:
        ok, detail = False, "connection refused"
    except TimeoutError:
        ok, detail = False, f"timed out after {probe.timeout_seconds:g} s"
    except OSError as exc:
        ok, detail = False, f"{exc.__class__.__name__}: {exc}"
    return ProbeResult(ok, detail, time.monotonic() - t0, utcnow(), value=value)


@contextmanager
def _client(http: httpx.Client | None) -> Iterator[httpx.Client]:
    """``http`` (left open: its owner closes it), or a client of this one request."""
    if http is not None:
        yield http
        return
    with probe_client() as own:
        yield own


def _error_code(resp: httpx.Response) -> str:
    """`` <CODE>`` when a JSON error body names one (``{"error": "DB_POOL_EXHAUSTED"}``)."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    return f" {code}"[:80] if isinstance(code, str) and code else ""


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def disk_usage(path: Path, max_files: int) -> tuple[int, int, bool]:
    """Apparent size in bytes of the regular files under ``path`` (recursively, not following
    symlinks), the number of files counted, and whether all were counted (at most
    ``max_files``). A missing directory uses 0 bytes."""
    total = files = 0
    todo = [path]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    todo.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
                    files += 1
                    if files >= max_files:
                        return total, files, False
            except FileNotFoundError:  # removed while counting
                continue
    return total, files, True


# == metric thresholds =====================================================================

SeriesKey = tuple[tuple[str, str], ...]


def _key(labels: dict[str, str]) -> SeriesKey:
    return tuple(sorted(labels.items()))


class MetricProbe:
    """A metric threshold over a sliding window of scrapes (see :class:`ProbeConfig`).

    Each call scrapes ``probe.url`` once and evaluates over the scrapes of the last
    ``window_seconds`` this object made, so a fresh object judges only what happened since it
    was created (what verification wants after a remedy).
    """

    def __init__(self, probe: ProbeConfig, clock: Callable[[], float] = time.monotonic,
                 http: httpx.Client | None = None):
        assert probe.type == "metric" and probe.url and probe.metric
        self.probe = probe
        self.clock = clock
        self.http = http  # shared with the owner's other checks (make_checker); None: one per scrape
        self.matchers = [parse_matcher(m) for m in probe.match]
        self.per_matchers = [parse_matcher(m) for m in probe.per_match]
        self.sample = f"{probe.metric}_bucket" if probe.quantile is not None else probe.metric
        self._history: deque[tuple[float, dict[str, dict[SeriesKey, float]]]] = deque()
        self._lock = threading.Lock()

    def __call__(self) -> ProbeResult:
        t0 = time.monotonic()
        try:
            with _client(self.http) as client:
                resp = client.get(self.probe.url or "", timeout=self.probe.timeout_seconds,
                                  headers={"accept": "text/plain;version=0.0.4"})
            resp.raise_for_status()
            scraped = self._select(resp.text)
        except (httpx.HTTPError, ValueError, RuntimeError) as exc:  # RuntimeError: the shared client was closed
            return ProbeResult(True, f"no data: scraping {self.probe.url} failed ({exc.__class__.__name__}: {exc})"[:300],
                               time.monotonic() - t0, utcnow(), no_data=True)
        with self._lock:
            now = self.clock()
            self._history.append((now, scraped))
            while self._history and self._history[0][0] < now - self.probe.window_seconds:
                self._history.popleft()
            ok, detail, no_data, value, labels = self._evaluate(scraped)
        return ProbeResult(ok, detail, time.monotonic() - t0, utcnow(), no_data=no_data, value=value, labels=labels)

    # -- reading ---------------------------------------------------------------------------
    def _select(self, text: str) -> dict[str, dict[SeriesKey, float]]:
        """The series this probe reads: ``num`` (``metric``, filtered by ``match``) and ``den``
        (``per``, filtered by ``per_match``), by series; and the type of ``metric`` under
        ``__type__``."""
        slots = [("num", self.sample, self.matchers)]
        if self.probe.per:
            slots.append(("den", self.probe.per, self.per_matchers))
        out: dict[str, dict[SeriesKey, float]] = {slot: {} for slot, _, _ in slots}
        kind = "untyped"
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                for slot, name, matchers in slots:
                    if s.name == name and matches_all(matchers, s.labels):
                        out[slot][_key(s.labels)] = float(s.value)
                        if slot == "num":
                            kind = family.type
        out["__type__"] = {(("type", kind),): 0.0}
        return out

    def _increases(self, name: str) -> tuple[dict[SeriesKey, float], float]:
        """Per series of slot ``name`` (``num`` or ``den``), its increase over the window's scrapes (a drop is a
        counter reset, a series that appears starts from 0), and the span in seconds."""
        inc: dict[SeriesKey, float] = {}
        scrapes = list(self._history)
        for (_, before), (_, after) in zip(scrapes, scrapes[1:], strict=False):
            prev, cur = before.get(name, {}), after.get(name, {})
            for key, value in cur.items():
                old = prev.get(key, 0.0)
                inc[key] = inc.get(key, 0.0) + (value - old if value >= old else value)
        span = scrapes[-1][0] - scrapes[0][0] if len(scrapes) > 1 else 0.0
        return inc, span

    def _group(self, series: dict[SeriesKey, float], by: list[str], drop: tuple[str, ...] = ()) -> dict[SeriesKey, float]:
        groups: dict[SeriesKey, float] = {}
        for key, value in series.items():
            labels = dict(key)
            g = tuple((b, labels.get(b, "")) for b in by) + tuple((d, labels.get(d, "")) for d in drop)
            groups[g] = groups.get(g, 0.0) + value
        return groups

    # -- judging ---------------------------------------------------------------------------
    def _evaluate(self, latest: dict[str, dict[SeriesKey, float]]) -> tuple[bool, str, bool, float | None, dict[str, str]]:
        p = self.probe
        kind = dict(next(iter(latest["__type__"])))["type"]
        counter = kind in ("counter", "histogram", "summary", "gaugehistogram") or p.metric.endswith(("_total", "_count", "_sum"))  # type: ignore[union-attr]
        window = f"over {self._span_text()}"
        values: dict[SeriesKey, float] = {}
        what = ""
        if p.quantile is not None:
            inc, span = self._increases("num")
            if span <= 0:
                return self._no_data("needs two scrapes to measure a histogram's window")
            buckets = self._group(inc, p.by, drop=("le",))
            per_group: dict[SeriesKey, list[tuple[float, float]]] = {}
            for g, count in buckets.items():
                le = g[-1][1]
                per_group.setdefault(g[:-1], []).append((math.inf if le in ("+Inf", "Inf") else float(le), count))
            for g, bs in per_group.items():
                bs.sort()
                if bs and bs[-1][1] >= max(p.min_count, 1e-9):
                    values[g] = histogram_quantile(p.quantile, bs)
            what = f"p{p.quantile * 100:g} of {p.metric}"
        elif counter:
            inc, span = self._increases("num")
            if span <= 0:
                return self._no_data("needs two scrapes to measure a counter's rate")
            num = self._group(inc, p.by)
            if p.per:
                den_inc, _ = self._increases("den")
                den_labels = {name for key in den_inc for name, _ in key}
                shared = [b for b in p.by if b in den_labels]
                den = self._group(den_inc, shared)
                for g, n in num.items():
                    d = den.get(tuple((b, dict(g)[b]) for b in shared), 0.0)
                    if d >= max(p.min_count, 1e-9):
                        values[g] = n / d
                what = f"ratio of {p.metric}{_sel(p.match)} to {p.per}{_sel(p.per_match)}"
            else:
                values = {g: n / span for g, n in num.items()}
                what = f"rate of {p.metric}{_sel(p.match)} per second"
        else:
            num = self._group(latest["num"], p.by)
            if p.per:
                den = self._group(latest["den"], p.by)
                values = {g: n / den[g] for g, n in num.items() if den.get(g)}
                what = f"ratio of {p.metric} to {p.per}"
            else:
                values = num
                what = f"{p.metric}{_sel(p.match)}"
            window = "now"
        if not values:
            return self._no_data(f"no series of {p.metric}{_sel(p.match)} with at least {p.min_count:g} events {window}")
        worst = max(values, key=values.__getitem__) if p.above is not None else min(values, key=values.__getitem__)
        v = values[worst]
        broken = (p.above is not None and v > p.above) or (p.below is not None and v < p.below)
        where = ", ".join(f'{k}="{val}"' for k, val in worst)
        limits = []
        if p.above is not None:
            limits.append(f"above {p.above:g}")
        if p.below is not None:
            limits.append(f"below {p.below:g}")
        verdict = f"{'' if broken else 'not '}{' or '.join(limits)}"
        detail = f"{what}{' for ' + where if where else ''} is {v:.4g} {window}, {verdict}"
        return (not broken), detail, False, v, dict(worst)

    def _span_text(self) -> str:
        span = self._history[-1][0] - self._history[0][0] if len(self._history) > 1 else 0.0
        return f"the last {span:.1f} s"

    def _no_data(self, why: str) -> tuple[bool, str, bool, float | None, dict[str, str]]:
        return True, f"no data: {why}", True, None, {}


def _sel(matchers: list[str]) -> str:
    return "{" + ",".join(matchers) + "}" if matchers else ""


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of a histogram given as sorted (upper bound, cumulative count)
    pairs, interpolating linearly inside the bucket as Prometheus' ``histogram_quantile``
    does; a quantile in the +Inf bucket is the largest finite upper bound."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


# == signals ================================================================================

def probe_signal(service: str, probe: ProbeConfig, status: SignalStatus, result: ProbeResult,
                 first_failure: datetime, failures: int, supervisor: Supervisor | None) -> Signal:
    """The signal a probe emits when its failure threshold is reached (firing) or when it
    passes again (resolved). Labels: ``alertname``, ``service``, ``probe``, ``probe_type``,
    the metric group's labels (metric probes) or the worst series' labels (promql probes, whose
    annotations name the ``promql`` query and the ``prometheus_url``), ``path`` (disk probes); managed services add
    ``process_state`` and the annotation ``process_exit``. The fingerprint is over alertname,
    service and probe."""
    labels = {"alertname": probe.alertname or DEFAULT_ALERTNAMES[probe.type], "service": service,
              "probe": probe.label, "probe_type": probe.type}
    annotations = {"detail": result.detail, "consecutive_failures": str(failures)}
    if probe.type in ("container", "systemd"):
        labels.update({k: v for k, v in result.labels.items() if k not in labels})
        if result.value is not None:
            annotations["restart_count"] = f"{result.value:.0f}"
    if probe.type in ("metric", "promql"):
        labels.update({k: v for k, v in result.labels.items() if k not in labels})
        if probe.type == "metric":
            labels["metric"] = probe.metric or ""
        else:  # diagnosis reads these back to attach the query's recent values (heald.diagnose.metrics)
            annotations["promql"] = probe.query or ""
            annotations["prometheus_url"] = probe.url or ""
        if result.value is not None:
            annotations["value"] = f"{result.value:.6g}"
        if probe.above is not None:
            annotations["threshold"] = f"above {probe.above:g}"
        elif probe.below is not None:
            annotations["threshold"] = f"below {probe.below:g}"
    if probe.type == "disk":
        labels["path"] = str(probe.path)
        annotations["quota_bytes"] = str(probe.max_bytes)
        if result.value is not None:
            annotations["used_bytes"] = f"{result.value:.0f}"
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
                 severity=Severity.critical, summary=summary[:10_000], labels=labels, annotations=annotations,
                 starts_at=first_failure, ends_at=result.at if status == SignalStatus.resolved else None)
    sig.fingerprint = fingerprint(sig, fields=("alertname", "service", "probe"))
    return sig


class ProbeRunner:
    """Runs every probe of every service in ``config`` on its interval; calls ``emit`` with the
    signals (see the module docstring). ``on_result`` sees every single result. With ``store``,
    each probe starts from its stored state and saves every change of it. Every probe of the
    runner sends its HTTP requests through one client (:func:`probe_client`), made by
    :meth:`start` and closed by :meth:`stop`."""

    def __init__(self, config: HealdConfig, supervisor: Supervisor | None, emit: Callable[[Signal], object],
                 on_result: Callable[[str, ProbeConfig, ProbeResult], None] | None = None,
                 store: Store | None = None):
        self.config = config
        self.supervisor = supervisor
        self.emit = emit
        self.on_result = on_result
        self.store = store
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._states: dict[tuple[str, str], ProbeState] = {}
        self.http: httpx.Client | None = None
        #: ``owns(service, probe label)``: whether this worker runs that probe now (several workers
        #: on one database lease each probe to one of them, :mod:`heald.engine.cluster`); None: all.
        self.owns: Callable[[str, str], bool] | None = None

    def start(self) -> None:
        """Start one thread per probe (and the runner's HTTP client)."""
        self.http = probe_client()
        if self.store is not None:
            self._states = load_probe_states(self.store)
        for service, svc in self.config.services.items():
            for probe in svc.probes:
                t = threading.Thread(target=self._loop, args=(service, probe), daemon=True,
                                     name=f"probe-{service}-{probe.label}")
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """Stop every probe's thread (waiting up to 5 s each) and close the HTTP client (a
        probe still in a request then ends with an error, not reported: the runner stopped)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        if self.http is not None:
            self.http.close()

    def _loop(self, service: str, probe: ProbeConfig) -> None:
        check = make_checker(probe, service, self.supervisor, self.config, http=self.http)
        state = self._states.get((service, probe.label), ProbeState())
        failures, successes, firing = state.failures, state.successes, state.firing
        first_failure: datetime | None = state.first_failure
        fired: str | None = state.fingerprint  # the fingerprint of the signal firing now
        next_at = time.monotonic()
        running_here = True
        while not self._stop.is_set():
            if self.owns is not None and not self.owns(service, probe.label):
                running_here = False  # another worker runs it; its state is in the store
                self._stop.wait(min(probe.interval_seconds, 0.5))
                next_at = time.monotonic()
                continue
            if not running_here:  # taken over: go on from where its last runner left it
                running_here, check = True, make_checker(probe, service, self.supervisor, self.config, http=self.http)
                state = self._reload(service, probe)
                failures, successes, firing = state.failures, state.successes, state.firing
                first_failure, fired = state.first_failure, state.fingerprint
            result = check()
            if self._stop.is_set():  # stopped during the check: its client may be closed under it
                break
            if self.on_result:
                self.on_result(service, probe, result)
            if result.no_data:
                pass  # neither a failure nor a recovery
            elif result.ok:
                if firing:
                    sig = probe_signal(service, probe, SignalStatus.resolved, result, first_failure or result.at,
                                       failures, self.supervisor)
                    sig.fingerprint = fired or sig.fingerprint  # resolve what fired, even under an older config
                    self._emit(sig)
                failures, first_failure, firing, fired = 0, None, False, None
                successes += 1
            else:
                failures += 1
                successes = 0
                first_failure = first_failure or result.at
                if failures >= probe.failure_threshold and not firing:
                    firing = True
                    sig = probe_signal(service, probe, SignalStatus.firing, result, first_failure,
                                       failures, self.supervisor)
                    fired = sig.fingerprint
                    self._emit(sig)
            self._save(service, probe, ProbeState(min(failures, probe.failure_threshold), min(successes, 1), firing,
                                                  first_failure, fired))
            next_at += probe.interval_seconds
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow probe: skip missed ticks rather than bursting
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def _reload(self, service: str, probe: ProbeConfig) -> ProbeState:
        """The probe's state as its last runner stored it (a fresh one without a store)."""
        if self.store is not None:
            try:
                self._states = load_probe_states(self.store)
            except Exception:
                import structlog

                structlog.get_logger("heald.probes").exception("probe.state_load_failed", service=service)
        return self._states.get((service, probe.label), ProbeState())

    def _save(self, service: str, probe: ProbeConfig, state: ProbeState) -> None:
        """Store ``state`` when it differs from the last stored (streaks are counted only as far
        as they change what the probe emits, so a steady probe writes nothing); a failed write
        is logged and retried at the next change."""
        key = (service, probe.label)
        if self.store is None or self._states.get(key, ProbeState()) == state:
            return
        try:
            save_probe_state(self.store, service, probe.label, state)
            self._states[key] = state
        except Exception:
            import structlog

            structlog.get_logger("heald.probes").exception("probe.state_save_failed", service=service,
                                                           probe=probe.label)

    def _emit(self, signal: Signal) -> None:
        try:
            self.emit(signal)
        except Exception:  # a failed ingest must not kill the probe loop; it is logged by emit's owner
            import structlog

            structlog.get_logger("heald.probes").exception("probe.emit_failed", service=signal.service)
