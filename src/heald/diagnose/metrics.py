"""Recent metric values as diagnosis evidence, read from an existing Prometheus.

:class:`MetricsEvidence` sits among the reasoners (it gives no hypothesis of its own); for an
incident's firing signals it finds the PromQL expressions they came from — the ``promql``
annotation of a ``promql`` probe's signal, or the ``g0.expr`` of an Alertmanager or Grafana
alert's ``generator_url`` — and attaches each expression's values over the last
``window_seconds`` (``/api/v1/query_range``) to the diagnosis as evidence lines.

Only the Prometheus servers of the configured ``promql`` probes are ever asked: a URL taken
from a webhook payload is used only when its base equals one of them (a signal cannot make
heald send requests elsewhere). At most ``max_queries`` queries per diagnosis, each bounded by
the client's timeout and response size (:mod:`heald.sources.promql`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from heald.config import HealdConfig
from heald.models import Incident, Signal, SignalStatus
from heald.sources.promql import PrometheusAPI, PromQLError, Series


def _base(url: str) -> str:
    """``scheme://host:port/path-prefix`` of a Prometheus URL, without a trailing ``/graph``
    or ``/``, lowercased scheme and host."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    for suffix in ("/graph", "/alerts", "/query"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def _fmt(v: float) -> str:
    return "NaN" if math.isnan(v) else f"{v:.4g}"


def describe(expr: str, series: Series, window_seconds: float, max_points: int = 12) -> str:
    """One evidence line: the series' labels, min, max and last value over the window, and up
    to ``max_points`` of its values (evenly picked back from the last one, oldest first)."""
    values = [v for _, v in series.points]
    shown = {k: v for k, v in series.labels.items() if k != "__name__"}
    where = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}" if shown else ""
    finite = [v for v in values if not math.isnan(v)]
    stride = max(1, math.ceil(len(values) / max_points))
    sample = ", ".join(_fmt(v) for v in values[::-stride][::-1])
    stats = (f"min {_fmt(min(finite))}, max {_fmt(max(finite))}, " if finite else "") + f"last {_fmt(values[-1])}"
    return f"prometheus: {expr}{where} over the last {window_seconds:g} s: {stats} (values: {sample})"[:1000]


class MetricsEvidence:
    """A reasoner that only gathers evidence (see the module docstring). ``urls`` are the
    Prometheus base URLs heald may ask."""

    name = "prometheus"

    def __init__(self, urls: Iterable[str], window_seconds: float = 300.0, max_queries: int = 4,
                 max_series: int = 3, timeout_seconds: float = 5.0):
        self.allowed = {_base(u): u for u in urls}
        self.window_seconds = window_seconds
        self.max_queries = max_queries
        self.max_series = max_series
        self.timeout_seconds = timeout_seconds

    def diagnose(self, incident: Incident, signals: list[Signal]) -> None:
        """No hypothesis: this reasoner only adds evidence (:meth:`evidence`)."""
        return None

    def queries(self, signals: list[Signal]) -> list[tuple[str, str]]:
        """The (Prometheus URL, expression) pairs of ``signals``' firing ones, allowed URLs
        only, without repeats, at most ``max_queries``."""
        out: list[tuple[str, str]] = []
        for s in reversed(signals):
            if s.status != SignalStatus.firing:
                continue
            pairs = []
            if s.annotations.get("promql") and s.annotations.get("prometheus_url"):
                pairs.append((s.annotations["prometheus_url"], s.annotations["promql"]))
            gen = s.annotations.get("generator_url")
            if gen:
                exprs = parse_qs(urlsplit(gen).query).get("g0.expr")
                if exprs:
                    pairs.append((gen, exprs[0]))
            for url, expr in pairs:
                allowed = self.allowed.get(_base(url))
                if allowed is not None and 0 < len(expr) <= 4000 and (allowed, expr) not in out:
                    out.append((allowed, expr))
        return out[: self.max_queries]

    def evidence(self, incident: Incident, signals: list[Signal]) -> list[str]:
        """Evidence lines: each query's recent values per series (at most ``max_series``), or
        why they could not be read. Never raises."""
        lines: list[str] = []
        end = time.time()
        start = end - self.window_seconds
        step = max(1.0, self.window_seconds / 60)
        for url, expr in self.queries(signals):
            try:
                series = PrometheusAPI(url, self.timeout_seconds).query_range(expr, start, end, step)
            except PromQLError as exc:
                lines.append(f"prometheus: {expr}: its recent values could not be read ({exc})"[:1000])
                continue
            series = [s for s in series if s.points]
            if not series:
                lines.append(f"prometheus: {expr}: no values in the last {self.window_seconds:g} s"[:1000])
            for s in series[: self.max_series]:
                lines.append(describe(expr, s, self.window_seconds))
        return lines


def metrics_evidence(config: HealdConfig) -> list[MetricsEvidence]:
    """The evidence gatherer for ``config``: one when a service has a ``promql`` probe (its
    Prometheus is the one heald may ask), none otherwise."""
    urls = [p.url for svc in config.services.values() for p in svc.probes if p.type == "promql" and p.url]
    return [MetricsEvidence(urls)] if urls else []
