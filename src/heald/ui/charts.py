"""Charts drawn on the server as inline SVG (no charting script in the browser).

:func:`trend_svg` draws time to detect and time to recover per closed incident, oldest to
newest, as two lines on one seconds axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 14, 34


@dataclass(frozen=True)
class Point:
    """One closed incident on the trend: its id and its times in seconds (None: unknown)."""

    incident_id: int
    time_to_detect_s: float | None
    time_to_recover_s: float | None


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ ``value`` (an axis end that reads well)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _fmt(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.2f} s"


def trend_svg(points: Sequence[Point], *, title: str = "Time to detect and time to recover per incident") -> Markup:
    """An SVG line chart of ``points`` (oldest first), ``role="img"`` with a title and a
    description naming the figures, so a screen reader gets the summary. Empty ``points``
    gives a chart frame saying there is no data yet."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for p in points for v in (p.time_to_detect_s, p.time_to_recover_s) if v is not None]
    top = _nice_max(max(values, default=0.0))
    n = len(points)

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    ttd = [p.time_to_detect_s for p in points if p.time_to_detect_s is not None]
    ttr = [p.time_to_recover_s for p in points if p.time_to_recover_s is not None]
    desc = (f"{n} closed incidents. Time to detect: median {_fmt(sorted(ttd)[len(ttd) // 2])}, "
            f"latest {_fmt(ttd[-1])}. " if ttd else f"{n} closed incidents. ") + \
           (f"Time to recover: median {_fmt(sorted(ttr)[len(ttr) // 2])}, latest {_fmt(ttr[-1])}." if ttr else
            "No recovery times yet.")
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="trend-title trend-desc" '
           f'xmlns="http://www.w3.org/2000/svg">',
           f'<title id="trend-title">{escape(title)}</title><desc id="trend-desc">{escape(desc)}</desc>']
    for k in range(5):
        v = top * k / 4
        yy = y(v)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{escape(_fmt(v))}</text>')
    if n == 0:
        out.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
                   f'class="empty">no closed incidents yet</text>')
    every = max(1, math.ceil(n / 12))
    for i, p in enumerate(points):
        if i % every == 0 or i == n - 1:
            out.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" class="tick">'
                       f'#{p.incident_id}</text>')
    for cls, label, attr in (("ttd", "time to detect", "time_to_detect_s"), ("ttr", "time to recover", "time_to_recover_s")):
        pts = [(x(i), y(getattr(p, attr)), p) for i, p in enumerate(points) if getattr(p, attr) is not None]
        if len(pts) > 1:
            out.append(f'<polyline class="line {cls}" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b, _ in pts)}"/>')
        for a, b, p in pts:
            out.append(f'<circle class="dot {cls}" cx="{a:.1f}" cy="{b:.1f}" r="3.5"><title>incident #{p.incident_id}: '
                       f'{label} {escape(_fmt(getattr(p, attr)))}</title></circle>')
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 4}" class="legend ttd">● time to detect</text>'
               f'<text x="{LEFT + 140}" y="{HEIGHT - 4}" class="legend ttr">● time to recover</text>')
    out.append("</svg>")
    return Markup("".join(out))
