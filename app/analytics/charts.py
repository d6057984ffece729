"""Lay out the dashboard's charts from timeseries() buckets: plain geometry the template draws as inline SVG."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 24, 12, 30  # room for the axis labels
# Bucket widths a person reads easily; the dashboard takes the smallest that keeps a window to MAX_BARS bars.
BUCKET_WIDTHS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_BARS = 120


@dataclass(frozen=True)
class Tick:
    at: float  # x or y in SVG units
    label: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # CSS class: ok or error
    title: str


@dataclass(frozen=True)
class Line:
    kind: str  # CSS class: p50 or p95
    label: str
    segments: list[str]  # SVG polyline points, one entry per unbroken run
    dots: list[tuple[float, float]]  # runs of a single bucket, which a polyline cannot show


@dataclass
class Chart:
    """One chart's geometry in a WIDTH x HEIGHT viewBox."""

    title: str
    unit: str
    empty: bool
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def bucket_layout(window_seconds: float) -> tuple[int, int]:
    """Return (bucket width in seconds, bucket count) covering at least the window in at most MAX_BARS bars."""
    width = next((w for w in BUCKET_WIDTHS if window_seconds / w <= MAX_BARS), BUCKET_WIDTHS[-1])
    return width, max(1, min(MAX_BARS, math.ceil(window_seconds / width)))


def nice_ticks(top: float, count: int = 4, *, whole: bool = False) -> list[float]:
    """Return 0 and round steps (1, 2 or 5 x 10^n; whole numbers when whole) up to the first at or above top."""
    if not top > 0:
        return [0.0, 1.0]
    rough = max(top / count, 1) if whole else top / count
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough)
    return [i * step for i in range(math.ceil(round(top / step, 9)) + 1)]


def number(value: float) -> str:
    """Return a short label: 3, 2.5, 1,200."""
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2g}"


def _time_label(ts: float, span: float) -> str:
    fmt = "%H:%M" if span <= 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(ts))


def _frame(chart: Chart, buckets: Sequence[dict[str, Any]], top_value: float, whole: bool) -> tuple[float, float]:
    """Fill the axes; return the x width of a bucket and the y scale (SVG units per value unit)."""
    values = nice_ticks(top_value, whole=whole)
    height = chart.bottom - chart.top
    scale = height / values[-1]
    chart.y_ticks = [Tick(chart.bottom - v * scale, number(v)) for v in values]
    step = (chart.right - chart.left) / len(buckets)
    span = buckets[-1]["end"] - buckets[0]["start"]
    every = max(1, math.ceil(len(buckets) / 6))
    chart.x_ticks = [
        Tick(chart.left + i * step, _time_label(buckets[i]["start"], span)) for i in range(0, len(buckets), every)
    ]
    return step, scale


def requests_chart(buckets: Sequence[dict[str, Any]]) -> Chart:
    """Return stacked bars per bucket: successful requests below, errors above."""
    chart = Chart("Requests", "requests per bucket", empty=not any(b["requests"] for b in buckets))
    if not buckets:
        return chart
    step, scale = _frame(chart, buckets, max(b["requests"] for b in buckets), whole=True)
    gap = min(1.0, step * 0.15)
    for i, bucket in enumerate(buckets):
        errors, ok = bucket["errors"], bucket["requests"] - bucket["errors"]
        x, base = chart.left + i * step + gap / 2, chart.bottom
        title = f"{_time_label(bucket['start'], 0)} UTC: {bucket['requests']} requests, {errors} errors"
        for kind, count in (("ok", ok), ("error", errors)):
            if count:
                height = count * scale
                chart.bars.append(Bar(x, base - height, step - gap, height, kind, title))
                base -= height
    return chart


def latency_chart(buckets: Sequence[dict[str, Any]]) -> Chart:
    """Return p50 and p95 latency lines, broken where a bucket had no requests."""
    peaks = [b["latency_p95_ms"] for b in buckets if b["latency_p95_ms"] is not None]
    chart = Chart("Latency", "milliseconds", empty=not peaks)
    if not buckets:
        return chart
    step, scale = _frame(chart, buckets, max(peaks, default=0), whole=False)
    # p95 first, so p50 is drawn on top where they meet (a bucket of one request has both equal).
    for key, kind, label in (("latency_p95_ms", "p95", "p95"), ("latency_p50_ms", "p50", "p50")):
        runs: list[list[tuple[float, float]]] = [[]]
        for i, bucket in enumerate(buckets):
            value = bucket[key]
            if value is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((round(chart.left + (i + 0.5) * step, 2), round(chart.bottom - value * scale, 2)))
        segments = [" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1]
        dots = [run[0] for run in runs if len(run) == 1]
        chart.lines.append(Line(kind, label, segments, dots))
    return chart
