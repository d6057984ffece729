"""/dashboard: one server-rendered page of charts, provider and pool status and sessions, behind the admin key."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from .. import analytics
from ..analytics import recorder
from ..analytics.charts import bucket_layout, latency_chart, requests_chart
from ..auth import COOKIE, DASHBOARD, IN_VIEW, Guard, admin_key_ok, dashboard_cookie
from ..errors import AnalyticsError, AuthenticationError, InvalidRequestError, StoreError
from ..pool_rules import pool_status
from ..providers import get_router
from ..security_headers import PAGE_HEADERS
from ..session_rules import active_since
from ..store import get_store
from ..version import __version__
from .analytics import parse_window

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
# Signing in and out is open: the sign-in form checks the key it is sent.
bp.before_request(Guard(DASHBOARD, login=IN_VIEW, logout=IN_VIEW))
log = logging.getLogger(__name__)

SIGN_IN_SECONDS = 12 * 3600
WINDOWS = ("1h", "6h", "24h", "7d")
REFRESH_RANGE = (5, 3600)
DEFAULT_REFRESH = 30
MAX_SESSION_ROWS = 200
MAX_DETAIL_SHOWN = 120  # characters of a userscript error's detail in the sessions table


def _choice(value: str | None) -> str | None:
    return value if value in WINDOWS else None


def _refresh() -> int:
    try:
        seconds = int(request.args.get("refresh", DEFAULT_REFRESH))
    except ValueError:
        return DEFAULT_REFRESH
    return 0 if seconds <= 0 else max(REFRESH_RANGE[0], min(REFRESH_RANGE[1], seconds))


def _login_page(status: int, error: str | None = None):
    window = _choice(request.values.get("window"))
    return (
        render_template("dashboard/login.html", error=error, window=window, version=__version__),
        status,
        PAGE_HEADERS,
    )


@bp.errorhandler(AuthenticationError)
def _sign_in(_error: AuthenticationError):
    # A browser that is not signed in gets the sign-in form, not the JSON error.
    return _login_page(401)


@bp.get("")
def index():
    """Show charts of requests and latency, per-model figures, provider status and sessions."""
    error, window_label = None, request.args.get("window", "1h")
    try:
        window = parse_window(window_label)
    except InvalidRequestError as exc:
        error, window_label, window = exc.message, "1h", 3600.0
    page = {
        "version": __version__,
        "window": window_label,
        "windows": WINDOWS,
        "refresh": _refresh(),
        "generated_at": _stamp(time.time()) + " UTC",
        "open_gateway": not current_app.config["GATEWAY_ADMIN_KEY"],
        "cookie_session": bool(request.cookies.get(COOKIE)),
        "error": error,
        "providers": get_router().status(),
        **_pools(),
        **_traffic(window),
    }
    page.update(_sessions(page.pop("usage")))
    return render_template("dashboard/index.html", **page), 400 if error else 200, PAGE_HEADERS


@bp.post("/login")
def login():
    """Check the admin key from the form and keep the browser signed in with an HttpOnly cookie."""
    admin_key = current_app.config["GATEWAY_ADMIN_KEY"]
    target = url_for("dashboard.index", window=_choice(request.form.get("window")))
    if not admin_key:
        return redirect(target, 303)
    given = request.form.get("admin_key", "").strip()
    if not admin_key_ok(given):
        log.warning("dashboard sign-in refused from %s", request.remote_addr)
        return _login_page(401, "That is not the admin key." if given else "Enter the admin key.")
    expires = int(time.time()) + SIGN_IN_SECONDS
    response = redirect(target, 303)
    response.set_cookie(
        COOKIE,
        dashboard_cookie(expires),
        max_age=SIGN_IN_SECONDS,
        path=url_for("dashboard.index"),
        secure=_https(),
        httponly=True,
        samesite="Strict",
    )
    return response


@bp.post("/logout")
def logout():
    """Forget this browser's sign-in."""
    response = redirect(url_for("dashboard.index"), 303)
    response.delete_cookie(COOKIE, path=url_for("dashboard.index"), secure=_https(), httponly=True)
    return response


def _https() -> bool:
    # Behind APISIX or a TLS-terminating proxy the gateway sees plain http; the public URL says what browsers use.
    return request.is_secure or (current_app.config["GATEWAY_PUBLIC_URL"] or "").startswith("https://")


def _traffic(window: float) -> dict[str, Any]:
    """Return charts, per-model rows, totals and per-session usage, or why analytics cannot show them."""
    result: dict[str, Any] = {"charts": [], "summary": [], "totals": None, "usage": {}, "analytics_note": None}
    target = recorder()
    if target is None:
        result["analytics_note"] = "Analytics are off (GATEWAY_ENABLE_SESSION_ANALYTICS=false)."
        return result
    width, count = bucket_layout(window)
    try:
        target.flush()
        with analytics.source() as source:
            buckets = source.timeseries(width * count, count)
            summary = source.summary(window)
            usage = source.sessions(limit=MAX_SESSION_ROWS * 5)
            streams = source.active_streams()
    except AnalyticsError as exc:
        result["analytics_note"] = exc.message
        return result
    requests_total = sum(row["requests"] for row in summary)
    errors_total = sum(row["errors"] for row in summary)
    result.update(
        charts=[requests_chart(buckets), latency_chart(buckets)],
        summary=summary,
        bucket_seconds=width,
        totals={
            "requests": requests_total,
            "errors": errors_total,
            "error_rate": errors_total / requests_total if requests_total else 0.0,
            "active_streams": streams,
            "tokens": sum(row["prompt_tokens"] + row["completion_tokens"] for row in summary),
        },
        usage={(row["domain"], row["session_name"]): row for row in usage},
    )
    return result


def _pools() -> dict[str, Any]:
    """Return every pool's members and their state, or why the session store cannot say."""
    try:
        return {"pools": pool_status(), "pools_note": None}
    except StoreError as exc:
        return {"pools": [], "pools_note": exc.message}


def _sessions(usage: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Return registered sessions joined with their traffic, active and most recent first, at most MAX_SESSION_ROWS."""
    try:
        stored = get_store().list()
    except StoreError as exc:
        return {"sessions": [], "sessions_total": 0, "sessions_registered": 0, "sessions_active": 0,
                "sessions_note": exc.message}  # fmt: skip
    since = active_since()
    rows = {}
    for session in stored:
        rows[(session.domain, session.session_name)] = {
            **session.to_dict(),
            "active": session.seen_since(since),
            "registered": True,
            "usage": None,
        }
    for key, row in usage.items():
        rows.setdefault(key, {"domain": key[0], "session_name": key[1], "active": False, "registered": False})
        rows[key]["usage"] = row
    for row in rows.values():
        used = row["usage"] or {}
        row["last_request_at"] = _stamp(used.get("last_seen"))
        row["last_heartbeat_at"] = (row.get("last_seen_at") or "")[:19].replace("T", " ")
        row["last_capture_at"] = _stamp(used.get("last_capture"))
        row["script_errors"] = used.get("script_errors_24h", 0)
        last_error = used.get("last_script_error")
        row["last_script_error"] = last_error and {"at": _stamp(last_error["ts"]), "text": _said(last_error["detail"])}
    ordered = sorted(
        rows.values(),
        key=lambda r: (r["active"], max(r["last_heartbeat_at"], r["last_request_at"], r["last_capture_at"])),
    )
    ordered.reverse()
    return {
        "sessions": ordered[:MAX_SESSION_ROWS],
        "sessions_total": len(ordered),
        "sessions_registered": len(stored),
        "sessions_active": sum(1 for row in ordered if row["active"]),
        "sessions_note": None,
    }


def _stamp(epoch: float | None) -> str:
    """Return a UTC time as the tables show it, which also sorts as text ("" for none)."""
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _said(detail: Any) -> str:
    """Return what a userscript event's detail says, on one short line (`step=register status=401`)."""
    if isinstance(detail, dict):
        text = " ".join(f"{key}={value}" for key, value in detail.items())
    else:
        text = "" if detail is None else str(detail)
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_SHOWN else text[: MAX_DETAIL_SHOWN - 1] + "…"
