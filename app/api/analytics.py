"""/analytics (admin key) and /metrics: what the gateway has been doing, from every process."""

from __future__ import annotations

import json
import re
import time

from flask import Blueprint, Response, current_app, request

from .. import analytics, request_record
from ..analytics import recorder
from ..analytics.prometheus import CONTENT_TYPE, render
from ..auth import ADMIN, IN_VIEW, METRICS, Guard, require_session
from ..errors import InvalidRequestError, NotFoundError
from ..logs import instance_id
from ..ratelimit import limit_events
from ..session_rules import check_domain, check_name
from ..validation import read_json_body

bp = Blueprint("analytics", __name__)
# A userscript's event may come with its registration token, which covers the session named in the body.
bp.before_request(Guard(ADMIN, custom_event=IN_VIEW, metrics=METRICS))

_WINDOW = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = 366 * 86400


def _database() -> str:
    if recorder() is None:
        raise NotFoundError("Analytics are off (GATEWAY_ENABLE_SESSION_ANALYTICS=false).", code="analytics_disabled")
    # Answers include this process's latest events, not only those its writer happened to flush already.
    recorder().flush()
    return current_app.config["GATEWAY_ANALYTICS_PATH"]


def _source() -> analytics.Source:
    """Return the fleet's aggregates (Redis) or this machine's file, with this process's events written."""
    _database()
    return analytics.source()


def parse_window(raw: str) -> float:
    """Return a ?window= value (3600, 90m, 24h, 7d) in seconds; raise InvalidRequestError outside 60 s to 366 d."""
    match = _WINDOW.fullmatch(raw.strip().lower())
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if not 60 <= seconds <= MAX_WINDOW:
        raise InvalidRequestError("'window' must be 60 s to 366 d, e.g. 3600, 90m, 24h or 7d.", param="window")
    return seconds


@bp.get("/analytics/summary")
def summary():
    """Per provider and model over ?window= (default 1h): requests, error rate, latency p50/p95, TTFB p50."""
    window = parse_window(request.args.get("window", "1h"))
    with _source() as source:
        return {"object": "list", "window_seconds": window, "data": source.summary(window)}


@bp.get("/analytics/sessions")
def sessions():
    """Per session and domain: requests, errors, last request, tokens; its userscript's last capture and errors."""
    with _source() as source:
        return {"object": "list", "data": source.sessions()}


EVENT_KINDS = ("capture", "heartbeat", "error", "info")
MAX_EVENT_BODY = 8 * 1024
# What the script reports (a step, a status, an attempt number) fits in a few dozen characters; the rest is noise
# that would fill the events table.
MAX_DETAIL = 1024


@bp.post("/analytics/event")
def custom_event():
    """Record a userscript's event (capture, heartbeat, error, info) for its session; token-scoped like register."""
    body = read_json_body(MAX_EVENT_BODY)
    domain, name = check_domain(body.get("domain")), check_name(body.get("session_name"))
    scope = require_session(domain, name)
    if scope is not None or not current_app.config["GATEWAY_ADMIN_KEY"]:
        # A script's events (or anyone's, on an open gateway) are counted; the admin's are not. Only a genuine token
        # has a count of its own: made-up ones would each start a fresh allowance.
        limit_events(request.headers.get("X-Registration-Token", "").strip() if scope is not None else "")
    kind = body.get("kind")
    if kind not in EVENT_KINDS:
        raise InvalidRequestError(f"'kind' must be one of {', '.join(EVENT_KINDS)}.", param="kind")
    detail = body.get("detail")
    if detail is not None and not isinstance(detail, (dict, str)):
        raise InvalidRequestError("'detail' must be an object or a string.", param="detail")
    if detail is not None and len(json.dumps(detail, ensure_ascii=False)) > MAX_DETAIL:
        raise InvalidRequestError(f"'detail' must be at most {MAX_DETAIL} characters as JSON.", param="detail")
    target = recorder()
    if target is None:
        raise NotFoundError("Analytics are off (GATEWAY_ENABLE_SESSION_ANALYTICS=false).", code="analytics_disabled")
    target.record(
        {
            "ts": time.time(),
            "kind": kind,
            "domain": domain,
            "session_name": name,
            "request_id": request_record.current().request_id,
            "detail": detail,
            "status": 202,
        }
    )
    return {"recorded": True, "kind": kind, "domain": domain, "session_name": name}, 202


@bp.get("/metrics")
def metrics():
    """Prometheus metrics summed over this instance's processes (Bearer GATEWAY_METRICS_TOKEN when set)."""
    text = render(analytics.metrics_snapshot(_database()), instance_id(current_app.config))
    return Response(text, content_type=CONTENT_TYPE)
