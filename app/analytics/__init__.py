"""Analytics: record one event per request cheaply, aggregate them for the dashboard and Prometheus."""

from __future__ import annotations

from .db import BUCKETS, SCHEMA_VERSION, connect
from .queries import cleanup, metrics_snapshot, percentile, pid_alive, sessions, summary, timeseries
from .recorder import Recorder
from .writer import EVENT_COLUMNS, is_error

__all__ = [
    "BUCKETS",
    "EVENT_COLUMNS",
    "SCHEMA_VERSION",
    "Recorder",
    "cleanup",
    "connect",
    "is_error",
    "metrics_snapshot",
    "percentile",
    "pid_alive",
    "sessions",
    "summary",
    "timeseries",
]
