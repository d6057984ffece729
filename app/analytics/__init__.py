"""Analytics: record one event per request cheaply, aggregate them for the dashboard and Prometheus.

With SESSION_STORE=redis the dashboard and /analytics/* read the whole fleet's aggregates from Redis (fleet.py);
otherwise, and for /metrics always, this machine's SQLite file.
"""

from __future__ import annotations

from flask import Flask, current_app

from ..config import ConfigError
from ..errors import AnalyticsError
from .db import BUCKETS, SCHEMA_VERSION, connect
from .fleet import FleetAnalytics
from .queries import cleanup, metrics_snapshot, percentile, pid_alive, sessions, summary, timeseries
from .recorder import Recorder
from .sources import LocalSource, Source
from .writer import EVENT_COLUMNS, is_error

__all__ = [
    "BUCKETS",
    "EVENT_COLUMNS",
    "FleetAnalytics",
    "LocalSource",
    "SCHEMA_VERSION",
    "Source",
    "Recorder",
    "cleanup",
    "init_app",
    "connect",
    "is_error",
    "metrics_snapshot",
    "percentile",
    "pid_alive",
    "recorder",
    "sessions",
    "source",
    "summary",
    "timeseries",
]


def init_app(app: Flask) -> None:
    """Open the analytics database, unless GATEWAY_ENABLE_SESSION_ANALYTICS is off."""
    app.extensions["analytics"] = None
    config = app.config
    if config["GATEWAY_ENABLE_SESSION_ANALYTICS"]:
        fleet = None
        if config["SESSION_STORE"] == "redis":
            retention, timeout = config["GATEWAY_ANALYTICS_RETENTION_DAYS"], config["GATEWAY_STORE_LOCK_TIMEOUT"]
            fleet = FleetAnalytics(config["REDIS_URL"], retention, timeout)
        try:
            app.extensions["analytics"] = Recorder(config["GATEWAY_ANALYTICS_PATH"], fleet=fleet)
        except AnalyticsError as exc:
            raise ConfigError(f"GATEWAY_ANALYTICS_PATH: {exc.message}") from None


def recorder() -> Recorder | None:
    """Return the current app's analytics recorder, or None when analytics are off."""
    return current_app.extensions.get("analytics")


def source() -> Source:
    """Return what the dashboard and /analytics/* read: the fleet's Redis aggregates, or the SQLite file."""
    target = recorder()
    if target is not None and target.fleet is not None:
        return target.fleet
    return LocalSource(current_app.config["GATEWAY_ANALYTICS_PATH"])
