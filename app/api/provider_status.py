"""GET /providers/status: each provider's settings, circuit state and recent health (admin key when set)."""

from __future__ import annotations

from flask import Blueprint

from ..auth import ADMIN, Guard
from ..providers import get_router

bp = Blueprint("providers", __name__, url_prefix="/providers")
bp.before_request(Guard(ADMIN))


@bp.get("/status")
def status():
    """Show every provider: enabled, base URL (no secrets), circuit state, last success/failure, latency, models."""
    return {"object": "list", "data": get_router().status()}
