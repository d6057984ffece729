"""/analytics (admin key) and /metrics: what the gateway has been doing, from every process."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from .. import analytics
from ..analytics.prometheus import CONTENT_TYPE, render
from ..auth import key_matches, provided_key, require_admin
from ..errors import AuthenticationError, InvalidRequestError, NotFoundError
from ..observe import recorder

bp = Blueprint("analytics", __name__)

_WINDOW = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = 366 * 86400


def _database() -> str:
    if recorder() is None:
        raise NotFoundError("Analytics are off (GATEWAY_ENABLE_SESSION_ANALYTICS=false).", code="analytics_disabled")
    # Answers include this process's latest events, not only those its writer happened to flush already.
    recorder().flush()
    return current_app.config["GATEWAY_ANALYTICS_PATH"]


def _window() -> float:
    raw = request.args.get("window", "1h").strip().lower()
    match = _WINDOW.fullmatch(raw)
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not 60 <= seconds <= MAX_WINDOW:
        raise InvalidRequestError("'window' must be 60 s to 366 d, e.g. 3600, 90m, 24h or 7d.", param="window")
    return seconds


@bp.get("/analytics/summary")
def summary():
    """Per provider and model over ?window= (default 1h): requests, error rate, latency p50/p95, TTFB p50."""
    require_admin()
    window = _window()
    return {"object": "list", "window_seconds": window, "data": analytics.summary(_database(), window)}


@bp.get("/analytics/sessions")
def sessions():
    """Per session and domain: requests, errors, last seen, tokens."""
    require_admin()
    return {"object": "list", "data": analytics.sessions(_database())}


@bp.get("/metrics")
def metrics():
    """Prometheus metrics summed over every gateway process (Bearer GATEWAY_METRICS_TOKEN when set)."""
    token = current_app.config["GATEWAY_METRICS_TOKEN"]
    if token and not key_matches(provided_key(), (token,)):
        raise AuthenticationError("Missing or wrong metrics token ('Authorization: Bearer <GATEWAY_METRICS_TOKEN>').")
    return Response(render(analytics.metrics_snapshot(_database())), content_type=CONTENT_TYPE)
