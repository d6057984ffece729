"""Analytics: record one event per request cheaply, aggregate them for the dashboard and Prometheus."""

from __future__ import annotations

from flask import Flask, current_app

from ..config import ConfigError
from ..errors import AnalyticsError
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
    "init_app",
    "connect",
    "is_error",
    "metrics_snapshot",
    "percentile",
    "pid_alive",
    "recorder",
    "sessions",
    "summary",
    "timeseries",
]


def init_app(app: Flask) -> None:
    """Open the analytics database, unless GATEWAY_ENABLE_SESSION_ANALYTICS is off."""
    app.extensions["analytics"] = None
    if app.config["GATEWAY_ENABLE_SESSION_ANALYTICS"]:
        try:
            app.extensions["analytics"] = Recorder(app.config["GATEWAY_ANALYTICS_PATH"])
        except AnalyticsError as exc:
            raise ConfigError(f"GATEWAY_ANALYTICS_PATH: {exc.message}") from None


def recorder() -> Recorder | None:
    """Return the current app's analytics recorder, or None when analytics are off."""
    return current_app.extensions.get("analytics")
