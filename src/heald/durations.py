"""Durations in Prometheus's notation (``30s``, ``5m``, ``1h30m``, ``2d``, ``1w``), as
Alertmanager's ``amtool silence add --duration`` takes them. Source of the format:
prometheus/common ``model/time.go`` ``ParseDuration``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: one or more ``<integer><unit>`` parts, units ms s m h d w y, largest
    first (``1h30m``); a bare number is seconds. Raises ValueError naming the text and the form
    expected, and for a zero duration."""
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = _PART.findall(t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 2d, 1w")
        units = [u for _, u in parts]
        order = list(_UNITS)
        if len(set(units)) != len(units) or [order.index(u) for u in units] != sorted(
                (order.index(u) for u in units), reverse=True):
            raise ValueError(f"invalid duration {text!r}: give each unit once, largest first (e.g. 1h30m)")
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form with the two largest units: ``45s``, ``5m``, ``1h30m``, ``2d3h``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts[:2])
