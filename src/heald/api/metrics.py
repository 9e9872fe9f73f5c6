"""heald's own Prometheus metrics (``GET /metrics``), named by Prometheus' conventions
(https://prometheus.io/docs/practices/naming/: a ``heald_`` prefix, base units, ``_total``
for counters, ``_info`` for the build) and clean under ``promtool check metrics``.

Most figures are read from the store at scrape time, so they are the same whichever heald
worker is scraped and survive restarts. The two that count what only grows (signals, audit
entries) are tallied: a scrape counts only the rows added since a mark (:class:`Tally`), so its
cost follows the rows added lately, not the history (issue 19):

* ``heald_signals_received_total{source}``, ``heald_incidents{state}``,
  ``heald_remedies_total{remedy,outcome}``;
* ``heald_time_to_detect_seconds`` (histogram, every incident: from the first failing signal to
  the incident being opened) and ``heald_time_to_recover_seconds`` (healed incidents);
* ``heald_escalations_total`` (incidents that ended escalated to a human) and
  ``heald_approvals_waiting`` (incidents waiting for an approval now);
* ``heald_breaker_open{target}`` (1 while the target's circuit breaker is open) and
  ``heald_breaker_failures{target}`` (consecutive failed verifications).

These are this process's own (each worker of a cluster exposes its own, labelled by its
``heald_worker_info{executor_id}``): ``heald_probe_up{service,probe,type}`` (1 when the last check of
a probe this worker runs passed, 0 when it failed; a check without data leaves it unchanged),
``heald_probe_checks_total{service,probe}`` (the checks this worker ran: a probe is leased to
one worker, :mod:`heald.engine.cluster`), ``heald_cluster_leader`` (1 on the worker doing the
once-per-cluster work), ``heald_cluster_leases_held``, ``heald_cluster_workers_live`` (live
workers on the database), ``heald_cluster_recovered_workflows_total`` (pending healings of dead
workers this worker had DBOS recover), ``heald_build_info{version,python_version}`` (always 1), beside prometheus-client's
process collector (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, open
file descriptors, start time) and platform collector (``python_info``).

Exposition: Prometheus text format 0.0.4 via prometheus-client.
"""

from __future__ import annotations

import platform
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import sqlalchemy as sa
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from heald import __version__
from heald.config import ProbeConfig
from heald.engine.cluster import Cluster, list_workers
from heald.models import IncidentState
from heald.sources import SOURCE_METRICS
from heald.sources.probes import ProbeResult, ProbeRunner
from heald.store import Store
from heald.store.tables import CircuitBreakerRow, IncidentRow

#: Time-to-recover histogram buckets, seconds.
TTR_BUCKETS = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Time-to-detect histogram buckets, seconds.
TTD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
#: How long after a scrape saw an id its tally folds the rows up to it in for good, seconds: a
#: transaction holding a smaller id that commits later than that is not counted (PostgreSQL
#: hands out ids in insert order, not commit order).
SETTLE_SECONDS = 60.0

_K = TypeVar("_K", bound=Hashable)


class Tally(Generic[_K]):
    """Counts, by a key, of the rows of a table that only grows (rows never deleted, so ids
    never reused), kept across scrapes.

    ``count(after, upto)`` counts the rows with ``after < id <= upto`` (``upto`` None: no
    bound) and returns ``({key: n}, the largest id counted or after)``, reading only that id
    range. :meth:`totals` adds the rows after the mark to the counts settled below it; the mark
    moves to the largest id a scrape saw at least ``settle`` seconds (``clock``'s units) before,
    and the rows up to it are counted once more then and kept. So each scrape reads the rows of
    the last ``settle`` seconds or so; only the first (and the fold that follows it) reads the
    history. Thread-safe; a process's tallies start again from the store when it starts."""

    def __init__(self, count: Callable[[int, int | None], tuple[dict[_K, int], int]],
                 settle: float = SETTLE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self._count = count
        self._settle = settle
        self._clock = clock
        self._lock = threading.Lock()
        self._mark = 0
        self._settled: dict[_K, int] = {}
        self._seen: deque[tuple[float, int]] = deque()  # (when, the largest id seen), oldest first

    def totals(self) -> dict[_K, int]:
        """The counts of every row committed so far (see the class docstring)."""
        with self._lock:
            now = self._clock()
            target = self._mark
            while self._seen and self._seen[0][0] <= now - self._settle:
                target = self._seen.popleft()[1]
            if target > self._mark:
                folded, _ = self._count(self._mark, target)
                for key, n in folded.items():
                    self._settled[key] = self._settled.get(key, 0) + n
                self._mark = target
            tail, top = self._count(self._mark, None)
            if top > (self._seen[-1][1] if self._seen else self._mark):
                self._seen.append((now, top))
            return {key: self._settled.get(key, 0) + tail.get(key, 0) for key in self._settled.keys() | tail.keys()}


class StoreCollector(Collector):
    """Collects the store's figures (see the module docstring): one set of queries per scrape,
    the signals by source and the escalations tallied (:class:`Tally`)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.signals = Tally(store.count_signals_by_source_range, clock=clock)
        self.escalations = Tally(self._escalations, clock=clock)

    def _escalations(self, after: int, upto: int | None) -> tuple[dict[str, int], int]:
        n, top = self.store.count_escalations(after, upto)
        return {"escalated": n}, top

    def collect(self) -> Iterator[Metric]:
        signals = CounterMetricFamily("heald_signals_received", "Signals received, by source", labels=["source"])
        for source, n in sorted(self.signals.totals().items()):
            signals.add_metric([source], n)
        yield signals

        incidents = GaugeMetricFamily("heald_incidents", "Incidents, by state", labels=["state"])
        counts = self.store.count_incidents_by_state()
        for state in IncidentState:
            incidents.add_metric([state.value], counts.get(state.value, 0))
        yield incidents

        remedies = CounterMetricFamily("heald_remedies", "Remedies applied, by remedy and outcome",
                                       labels=["remedy", "outcome"])
        for (remedy, status), n in sorted(self.store.count_actions_by().items()):
            remedies.add_metric([remedy, status], n)
        yield remedies

        ttr = self.store.recovery_summary(TTR_BUCKETS)  # counted by the database: there may be 100k
        yield HistogramMetricFamily("heald_time_to_recover_seconds",
                                    "Time from the first failing signal to verified recovery, per healed incident",
                                    buckets=[(str(float(b)), n) for b, n in ttr["buckets"]] + [("+Inf", ttr["count"])],
                                    sum_value=ttr["sum"])

        with self.store.read() as s:
            # counted by the database: reading every incident took seconds at 100k
            if s.get_bind().dialect.name == "sqlite":
                ttd = (sa.func.julianday(IncidentRow.detected_at) - sa.func.julianday(IncidentRow.started_at)) * 86400.0
            else:
                ttd = sa.func.extract("epoch", IncidentRow.detected_at - IncidentRow.started_at)
            ttd = sa.func.max(ttd, 0.0) if s.get_bind().dialect.name == "sqlite" else sa.func.greatest(ttd, 0.0)
            ttd_row = s.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(ttd), 0.0),
                                          *(sa.func.coalesce(sa.func.sum(sa.case((ttd <= b, 1), else_=0)), 0)
                                            for b in TTD_BUCKETS))).one()
            breakers = s.execute(sa.select(CircuitBreakerRow.target, CircuitBreakerRow.opened_at,
                                           CircuitBreakerRow.failures).order_by(CircuitBreakerRow.target)).all()
        yield HistogramMetricFamily("heald_time_to_detect_seconds",
                                    "Time from the first failing signal to the incident being opened, per incident",
                                    buckets=[(str(float(b)), int(n)) for b, n in zip(TTD_BUCKETS, ttd_row[2:], strict=True)]
                                    + [("+Inf", int(ttd_row[0]))], sum_value=float(ttd_row[1]))
        yield CounterMetricFamily("heald_escalations", "Incidents that ended escalated to a human",
                                  value=self.escalations.totals().get("escalated", 0))
        yield GaugeMetricFamily("heald_approvals_waiting", "Incidents waiting for an approval",
                                value=counts.get(IncidentState.awaiting_approval.value, 0))
        open_ = GaugeMetricFamily("heald_breaker_open",
                                  "1 while the target's circuit breaker is open (remedies on it need an approval)",
                                  labels=["target"])
        failures = GaugeMetricFamily("heald_breaker_failures",
                                     "Consecutive failed verifications of remedies on the target", labels=["target"])
        for target, opened_at, n in breakers:
            open_.add_metric([target], 1 if opened_at is not None else 0)
            failures.add_metric([target], n)
        yield open_
        yield failures


class ProbeCollector(Collector):
    """``heald_probe_up``: the last result of each probe this process runs. :meth:`record` is
    a :class:`heald.sources.probes.ProbeRunner` ``on_result`` callback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up: dict[tuple[str, str, str], int] = {}
        self._checks: dict[tuple[str, str], int] = {}

    def record(self, service: str, probe: ProbeConfig, result: ProbeResult) -> None:
        """Note one check's result (a check without data changes nothing but the count)."""
        with self._lock:
            self._checks[(service, probe.label)] = self._checks.get((service, probe.label), 0) + 1
            if not result.no_data:
                self._up[(service, probe.label, probe.type)] = 1 if result.ok else 0

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("heald_probe_up", "1 when the last check of the probe passed, 0 when it failed",
                               labels=["service", "probe", "type"])
        with self._lock:
            for labels, value in sorted(self._up.items()):
                up.add_metric(list(labels), value)
            checks = CounterMetricFamily("heald_probe_checks", "Checks of the probe this worker ran",
                                         labels=["service", "probe"])
            for (service, probe), n in sorted(self._checks.items()):
                checks.add_metric([service, probe], n)
        yield up
        yield checks


class ClusterCollector(Collector):
    """This worker's place in the cluster (see the module docstring)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        c = self.cluster
        info = GaugeMetricFamily("heald_worker_info", "This worker's executor id (always 1)", labels=["executor_id"])
        info.add_metric([c.executor_id], 1)
        yield info
        yield GaugeMetricFamily("heald_cluster_leader", "1 while this worker does the once-per-cluster work",
                                value=1 if c.is_leader() else 0)
        yield GaugeMetricFamily("heald_cluster_leases_held", "Probe and log leases this worker holds",
                                value=len(c.held()))
        live = sum(1 for w in list_workers(c.engine, c.timeout) if w.live)
        yield GaugeMetricFamily("heald_cluster_workers_live", "Workers heartbeating on this database", value=live)
        yield CounterMetricFamily("heald_cluster_recovered_workflows",
                                  "Pending healings of dead or stopped workers this worker had DBOS recover",
                                  value=c.recovered)


class BuildCollector(Collector):
    """``heald_build_info``: heald's version and the Python running it, as labels of a 1."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("heald_build_info", "heald's version and the Python version running it",
                                 labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info


def watch_probes(probes: ProbeRunner | None, collector: ProbeCollector) -> None:
    """Have ``collector`` see every result of ``probes`` (keeping an ``on_result`` it had)."""
    if probes is None:
        return
    previous: Callable[[str, ProbeConfig, ProbeResult], None] | None = probes.on_result

    def both(service: str, probe: ProbeConfig, result: ProbeResult) -> None:
        collector.record(service, probe, result)
        if previous is not None:
            previous(service, probe, result)

    probes.on_result = both


def registry_for(store: Store, probes: ProbeRunner | None = None, cluster: Cluster | None = None) -> CollectorRegistry:
    """A registry with every collector above over ``store`` (and ``probes``, the runtime's
    probe runner, when this process runs probes; ``cluster``, this worker's membership)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store))
    for collector in SOURCE_METRICS:
        reg.register(collector)
    probe_collector = ProbeCollector()
    watch_probes(probes, probe_collector)
    reg.register(probe_collector)
    reg.register(BuildCollector())
    if cluster is not None:
        reg.register(ClusterCollector(cluster))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg
