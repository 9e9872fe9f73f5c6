"""Bursts of HTTP 5xx and slow responses, from access logs, probe results and alert text.

Status codes are read from:
- the NCSA common / combined log format (Apache, nginx): ``10.0.0.1 - - [10/Oct/2024:13:55:36
  +0000] "GET /products HTTP/1.1" 500 1234 "-" "curl/8.5.0"``;
- uvicorn's and gunicorn's access logs: ``INFO:     127.0.0.1:51234 - "GET /products HTTP/1.1"
  500 Internal Server Error``;
- JSON and logfmt access logs: ``"status": 500``, ``"status_code":503``, ``status=502``;
- heald's own HTTP probe: ``HTTP 503``; an alert's text: ``5xx rate 42%``, ``error rate``.

A burst is at least ``MIN_5XX`` server errors making at least ``MIN_RATIO`` of the requests
seen; its confidence grows with both. Latency rules read alert text such as ``p95 latency 4.2
s above the 0.5 s threshold``.
"""

from __future__ import annotations

import re
from collections import Counter

from heald.diagnose.signatures.base import Classification, register

MIN_5XX = 3
MIN_RATIO = 0.1

_ACCESS = re.compile(r'"(?P<method>GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (?P<path>\S+) HTTP/[\d.]+"\s+(?P<status>[1-5]\d\d)\b')
_FIELD = re.compile(r'"?\b(?:status|status_code|statusCode|http_status|response_status|code)"?\s*[:=]\s*"?(?P<status>[2-5]\d\d)\b')
_PROBE = re.compile(r"\bHTTP (?P<status>5\d\d)\b")
_CODE = re.compile(r'\b(?P<code>[A-Z][A-Z0-9]+(?:_[A-Z0-9]+){1,5})\b')
_RATE = re.compile(r"(?:\b5xx\b|\bHTTP 5\d\d\b|server errors?|error[- ]rate|errors? per second|\b50[0-4] (?:rate|ratio)|"
                   r"internal server error)", re.IGNORECASE)
_RATE_VALUE = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s?%")
_LATENCY = re.compile(r"(?:\bp(?:50|90|95|99)\b|latency|response time|request duration|slow (?:responses|requests))"
                      r"[^\n]{0,80}?(?:above|exceeds?|over|>|higher than|breach)|"
                      r"(?:high|elevated) (?:latency|response time)|latency (?:objective|SLO) (?:breached|violated)|"
                      r"\bslow_mode\b|took \d+(?:\.\d+)?\s?s\b[^\n]{0,40}(?:threshold|limit|budget)", re.IGNORECASE)
_IGNORED_CODES = {"HTTP", "GET", "POST", "PUT", "INFO", "WARNING", "ERROR", "DEBUG", "CRITICAL", "TRACE", "UTC"}


@register("http")
def http_errors(text: str) -> list[Classification]:
    """``http_5xx`` for a burst of server errors (details: count, requests, ratio, top paths and
    error codes) and ``high_latency`` for latency objectives breached."""
    out: list[Classification] = []
    statuses: Counter[int] = Counter()
    paths: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    evidence: list[str] = []
    alert_lines: list[str] = []
    probe_lines: list[str] = []
    latency_lines: list[str] = []
    for line in text.splitlines():
        m = _ACCESS.search(line) or _FIELD.search(line)
        if m:
            status = int(m.group("status"))
            statuses[status] += 1
            if status >= 500:
                if "path" in m.groupdict() and m.group("path"):
                    paths[m.group("path").split("?")[0]] += 1
                codes.update(c for c in _CODE.findall(line) if c not in _IGNORED_CODES)
                if len(evidence) < 5:
                    evidence.append(line.strip())
            continue
        if _PROBE.search(line):
            probe_lines.append(line.strip())
        elif _RATE.search(line):
            alert_lines.append(line.strip())
        if _LATENCY.search(line):
            latency_lines.append(line.strip())
    total = sum(statuses.values())
    n5 = sum(n for s, n in statuses.items() if s >= 500)
    details: dict[str, object] = {"server_errors": n5, "requests": total}
    if paths:
        details["paths"] = dict(paths.most_common(3))
    if codes:
        details["error_codes"] = dict(codes.most_common(3))
    if n5 >= MIN_5XX and n5 / total >= MIN_RATIO:
        ratio = n5 / total
        details["ratio"] = round(ratio, 3)
        conf = min(0.92, 0.7 + 0.1 * min(1.0, n5 / 20) + 0.15 * min(1.0, ratio / 0.5))
        out.append(Classification("http_5xx", round(conf, 3), evidence, details))
    elif probe_lines:
        out.append(Classification("http_5xx", 0.78, probe_lines[:3], details))
    elif alert_lines and any(_RATE_VALUE.search(line) or re.search(r"5xx|5\d\d", line) for line in alert_lines):
        out.append(Classification("http_5xx", 0.82, alert_lines[:3], details))
    elif n5:
        out.append(Classification("http_5xx", 0.5, evidence, details))
    if latency_lines:
        out.append(Classification("high_latency", 0.82, latency_lines[:3], {}))
    return out
