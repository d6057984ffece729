"""Dashboard chart geometry from known buckets: scales, stacking, gaps and axis labels."""

from __future__ import annotations

import pytest

from app.analytics.charts import MAX_BARS, bucket_layout, latency_chart, nice_ticks, number, requests_chart

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def buckets(*rows, width=60.0):
    """Return timeseries()-shaped buckets from (requests, errors, p50, p95) tuples."""
    return [
        {
            "start": T0 + i * width,
            "end": T0 + (i + 1) * width,
            "requests": requests,
            "errors": errors,
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
        }
        for i, (requests, errors, p50, p95) in enumerate(rows)
    ]


@pytest.mark.parametrize(
    ("window", "layout"),
    [(3600, (60, 60)), (6 * 3600, (300, 72)), (86400, (900, 96)), (7 * 86400, (7200, 84)), (366 * 86400, (86400, 120))],
)
def test_bucket_layout_covers_the_window_in_few_readable_bars(window, layout):
    width, count = bucket_layout(window)
    assert (width, count) == layout
    assert count <= MAX_BARS
    assert width * count >= window or count == MAX_BARS


def test_nice_ticks_are_round_and_reach_the_top():
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(250) == [0, 100, 200, 300]
    assert nice_ticks(1, whole=True) == [0, 1]
    assert nice_ticks(0.3) == pytest.approx([0, 0.1, 0.2, 0.3])
    assert nice_ticks(0) == [0.0, 1.0]
    assert [number(v) for v in (0, 2.5, 0.25, 1200, 15.5)] == ["0", "2.5", "0.25", "1,200", "15.5"]


def test_request_bars_stack_errors_on_successes_to_scale():
    chart = requests_chart(buckets((4, 1, 100, 200), (0, 0, None, None), (8, 0, 90, 95)))
    assert not chart.empty
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8"]
    scale = (chart.bottom - chart.top) / 8
    ok, error, tall = chart.bars
    assert (ok.kind, error.kind, tall.kind) == ("ok", "error", "ok")
    assert ok.height == pytest.approx(3 * scale) and ok.y + ok.height == pytest.approx(chart.bottom)
    assert error.height == pytest.approx(scale) and error.y + error.height == pytest.approx(ok.y)
    assert tall.height == pytest.approx(chart.bottom - chart.top)
    assert tall.x > ok.x + 2 * ok.width  # the empty middle bucket keeps its place
    assert ok.title == "08:00 UTC: 4 requests, 1 errors"


def test_latency_lines_break_where_no_requests_were():
    chart = latency_chart(
        buckets((1, 0, 100, 150), (2, 0, 120, 300), (0, 0, None, None), (1, 0, 80, 80), (0, 0, None, None))
    )
    p95, p50 = chart.lines  # p95 first so p50 is drawn on top
    assert (p95.kind, p50.kind) == ("p95", "p50")
    assert len(p50.segments) == 1 and len(p50.segments[0].split()) == 2
    assert len(p50.dots) == 1  # the lone bucket after the gap
    assert chart.y_ticks[-1].label == "300"
    top_y = float(p95.segments[0].split()[1].split(",")[1])
    assert top_y == pytest.approx(chart.top)  # 300 ms reaches the top gridline


def test_empty_windows_say_so():
    quiet = buckets((0, 0, None, None), (0, 0, None, None))
    assert requests_chart(quiet).empty and requests_chart(quiet).bars == []
    assert latency_chart(quiet).empty and all(not line.segments for line in latency_chart(quiet).lines)
    assert requests_chart([]).empty


def test_time_labels_show_dates_beyond_a_day():
    short = requests_chart(buckets(*[(1, 0, 1, 1)] * 60))
    assert short.x_ticks[0].label == "08:00" and len(short.x_ticks) == 6
    long = requests_chart(buckets(*[(1, 0, 1, 1)] * 84, width=7200))
    assert long.x_ticks[0].label == "01-15 08:00"
