"""GET /health and the index: is the gateway up, and do its upstreams answer."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, current_app, url_for

from ..errors import StoreError
from ..providers import get_router
from ..store import get_store
from ..version import __version__

bp = Blueprint("health", __name__)

OPEN_WARNING = "GATEWAY_API_KEYS is not set: /v1 is open to anyone who can reach this gateway."


@bp.get("/health")
def health():
    """Report status, version, time, auth mode, each upstream's reachability and how many bridges are up (cached)."""
    router = get_router()
    upstreams = router.health()
    try:
        store = {"ok": True, **get_store().describe()}
    except StoreError as exc:
        store = {"ok": False, "error": exc.message}
    all_ok = store["ok"] and all(entry["ok"] for entry in upstreams.values())
    body = {
        "status": "ok" if all_ok else "degraded",
        "version": __version__,
        "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "uptime_seconds": round(time.monotonic() - current_app.extensions["started"], 1),
        "auth": "api_key" if current_app.config["GATEWAY_API_KEYS"] else "open",
        "upstreams": upstreams,
        # Session bridges are counted, never named: their URLs are for the admin (/providers/status).
        "bridges": router.bridge_counts(),
        "session_store": store,
    }
    if not current_app.config["GATEWAY_API_KEYS"]:
        body["warnings"] = [OPEN_WARNING]
    return body


@bp.get("/")
def index():
    """Say what this is and where its endpoints are."""
    return {
        "name": "LMArena AI Gateway",
        "version": __version__,
        "openai_base_url": url_for("v1.models.list_models", _external=True).removesuffix("/models"),
        "endpoints": [
            "/v1/chat/completions",
            "/v1/images/generations",
            "/v1/models",
            "/health",
            "/session/list",
            "/dashboard",
            "/openapi.json",
        ],
    }
