"""PromQL against an existing Prometheus: the HTTP API client, the ``promql`` probe and the
reading of recent values for diagnosis.

Format (prometheus.io/docs/prometheus/latest/querying/api/): ``GET /api/v1/query?query=&time=``
and ``GET /api/v1/query_range?query=&start=&end=&step=`` answer ``{"status": "success" |
"error", "data": {"resultType": "vector" | "matrix" | "scalar" | "string", "result": …},
"errorType", "error"}``; a vector is ``[{"metric": {labels}, "value": [unix time, "value"]}]``,
a matrix ``[{"metric": {labels}, "values": [[unix time, "value"], …]}]``, a scalar
``[unix time, "value"]``; values are strings (``"NaN"``, ``"+Inf"`` included).

The ``promql`` probe (:class:`PromQLProbe`) evaluates its query once per check and compares the
worst series with its threshold (the highest for ``above``, the lowest for ``below``); the
crossing must last ``for_seconds`` — until then the result has no data ("pending", neither a
failure nor a recovery), as a Prometheus rule's ``for``. An unreachable Prometheus, an error
answer or an empty result are no data too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import httpx

from heald.config import ProbeConfig
from heald.jsontext import JSONInputError, loads
from heald.models import utcnow
from heald.sources.probes import ProbeResult

#: The most bytes of a Prometheus answer heald reads (a larger answer is an error).
MAX_RESPONSE_BYTES = 4_000_000
#: The most series heald keeps from one answer.
MAX_SERIES = 1000


class PromQLError(Exception):
    """Prometheus could not be asked, or answered with an error or a shape heald does not read."""


@dataclass(frozen=True)
class Series:
    """One series of an answer: its labels (``__name__`` included when Prometheus sends it) and
    its (unix time in seconds, value) points, oldest first."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _value(point: object) -> tuple[float, float]:
    if not isinstance(point, list) or len(point) != 2:
        raise PromQLError(f"a sample should be [time, \"value\"], got {str(point)[:80]}")
    at, value = point
    try:
        return float(at), float(value)  # "NaN", "+Inf" and "-Inf" included
    except (TypeError, ValueError) as exc:
        raise PromQLError(f"a sample value should be a number as a string, got {str(value)[:80]}") from exc


class PrometheusAPI:
    """A client of one Prometheus' HTTP API (``base_url`` such as ``http://127.0.0.1:9090``);
    each request times out after ``timeout_seconds`` (also sent as the query's ``timeout``).
    Requests go through ``http`` when given (a shared client its owner closes, such as a probe
    runner's :func:`heald.sources.probes.probe_client`), else through a client of their own."""

    def __init__(self, base_url: str, timeout_seconds: float = 5.0, http: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.http = http

    def _get(self, path: str, params: dict[str, str]) -> tuple[str, object]:
        params = {**params, "timeout": f"{self.timeout_seconds:g}s"}
        try:
            with ExitStack() as stack:
                client = self.http if self.http is not None else stack.enter_context(httpx.Client())
                resp = stack.enter_context(client.stream(
                    "GET", f"{self.base_url}{path}", params=params, timeout=self.timeout_seconds,
                    headers={"accept": "application/json", "user-agent": "heald"}))
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise PromQLError(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
        except RuntimeError as exc:  # httpx: the shared client was closed (its owner stopped)
            raise PromQLError(f"{self.base_url} not asked ({exc})"[:300]) from exc
        except httpx.HTTPError as exc:
            raise PromQLError(f"{self.base_url} unreachable ({exc.__class__.__name__}: {exc})"[:300]) from exc
        try:
            doc = loads(body)
        except JSONInputError as exc:
            raise PromQLError(f"HTTP {resp.status_code}, not JSON ({exc})"[:300]) from exc
        if not isinstance(doc, dict) or doc.get("status") != "success":
            err = doc.get("error") if isinstance(doc, dict) else None
            kind = doc.get("errorType") if isinstance(doc, dict) else None
            raise PromQLError(f"HTTP {resp.status_code}: {kind or 'error'}: {str(err)[:200]}")
        data = doc.get("data")
        if not isinstance(data, dict):
            raise PromQLError("the answer has no data object")
        return str(data.get("resultType")), data.get("result")

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """The instant value of ``expr`` (now, or unix time ``at``): one single-point series per
        element of a vector, or one unlabelled series for a scalar. Raises PromQLError."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        kind, result = self._get("/api/v1/query", params)
        if kind == "scalar":
            return [Series({}, [_value(result)])]
        if kind != "vector" or not isinstance(result, list):
            raise PromQLError(f"expected an instant vector or a scalar, got a {kind}")
        return [Series(_labels(item), [_value(item.get("value"))]) for item in result[:MAX_SERIES]
                if isinstance(item, dict)]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """The values of ``expr`` from ``start`` to ``end`` (unix seconds) every ``step``
        seconds. Raises PromQLError."""
        kind, result = self._get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}",
                                                          "end": f"{end:.3f}", "step": f"{step:g}"})
        if kind != "matrix" or not isinstance(result, list):
            raise PromQLError(f"expected a range vector, got a {kind}")
        out = []
        for item in result[:MAX_SERIES]:
            values = item.get("values") if isinstance(item, dict) else None
            if isinstance(values, list):
                out.append(Series(_labels(item), [_value(v) for v in values[:10_000]]))
        return out


def _labels(item: dict[str, object]) -> dict[str, str]:
    metric = item.get("metric")
    if not isinstance(metric, dict):
        return {}
    return {str(k)[:200]: str(v)[:500] for k, v in list(metric.items())[:30]}


class PromQLProbe:
    """The check of a ``promql`` probe (see the module docstring). Stateful: it remembers since
    when the threshold has been crossed, so one object must be reused from check to check."""

    def __init__(self, probe: ProbeConfig, clock: Callable[[], float] = time.monotonic,
                 http: httpx.Client | None = None):
        assert probe.type == "promql" and probe.url and probe.query
        self.probe = probe
        self.clock = clock
        self.api = PrometheusAPI(probe.url, probe.timeout_seconds, http=http)
        self._crossed_since: float | None = None

    def __call__(self) -> ProbeResult:
        p = self.probe
        t0 = time.monotonic()
        try:
            series = self.api.query(p.query or "")
        except PromQLError as exc:
            self._crossed_since = None
            return ProbeResult(True, f"no data: {exc}"[:300], time.monotonic() - t0, utcnow(), no_data=True)
        values = [(s.points[-1][1], s.labels) for s in series if s.points and not math.isnan(s.points[-1][1])]
        if not values:
            self._crossed_since = None
            return ProbeResult(True, f"no data: {p.query} returned no series", time.monotonic() - t0, utcnow(),
                               no_data=True)
        value, labels = (max if p.above is not None else min)(values, key=lambda v: v[0])
        broken = (p.above is not None and value > p.above) or (p.below is not None and value < p.below)
        limits = " or ".join([*([f"above {p.above:g}"] if p.above is not None else []),
                              *([f"below {p.below:g}"] if p.below is not None else [])])
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        where = ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items()))
        detail = f"{p.query}{' for ' + where if where else ''} is {value:.4g}, {'' if broken else 'not '}{limits}"
        now = self.clock()
        if not broken:
            self._crossed_since = None
            return ProbeResult(True, detail, time.monotonic() - t0, utcnow(), value=value, labels=shown)
        if self._crossed_since is None:
            self._crossed_since = now
        held = now - self._crossed_since
        if held < p.for_seconds:
            return ProbeResult(True, f"no data: pending, {detail} for {held:.1f} s of {p.for_seconds:g} s",
                               time.monotonic() - t0, utcnow(), no_data=True, value=value, labels=shown)
        if p.for_seconds:
            detail += f" for {held:.1f} s"
        return ProbeResult(False, detail, time.monotonic() - t0, utcnow(), value=value, labels=shown)
