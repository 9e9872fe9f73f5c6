"""heald's Prometheus metrics, read from the store at scrape time.

Because every figure comes from the database, the numbers are the same whichever heald worker
is scraped, and survive restarts. Exposition: Prometheus text format 0.0.4 via prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from heald.models import IncidentState
from heald.sources import SOURCE_METRICS
from heald.store import Store

#: Time-to-recover histogram buckets, seconds.
TTR_BUCKETS = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class StoreCollector(Collector):
    """Collects: signals received by source, incidents by state, remedies (actions) by remedy
    and outcome, and the time-to-recover histogram of healed incidents."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        signals = CounterMetricFamily("heald_signals_received", "Signals received, by source", labels=["source"])
        for source, n in sorted(self.store.count_signals_by_source().items()):
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

        times = self.store.recovery_times()
        buckets = [(str(b), sum(1 for t in times if t <= b)) for b in TTR_BUCKETS] + [("+Inf", len(times))]
        ttr = HistogramMetricFamily("heald_time_to_recover_seconds",
                                    "Time from the first failing signal to verified recovery, per healed incident",
                                    buckets=buckets, sum_value=sum(times))
        yield ttr


def registry_for(store: Store) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store))
    for collector in SOURCE_METRICS:
        reg.register(collector)
    return reg
