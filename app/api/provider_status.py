"""GET /providers/status: each provider's settings, each bridge's circuit, each pool member's state (admin key)."""

from __future__ import annotations

from flask import Blueprint

from ..auth import ADMIN, Guard
from ..errors import StoreError
from ..pool_rules import pool_status
from ..providers import get_router

bp = Blueprint("providers", __name__, url_prefix="/providers")
bp.before_request(Guard(ADMIN))


@bp.get("/status")
def status():
    """Show every provider and bridge (base URL, no secrets; circuit, cooldown, counts) and every pool's members."""
    body = {"object": "list", "data": get_router().status()}
    try:
        body["pools"] = pool_status()
    except StoreError as exc:  # the providers' part needs no session store: show it anyway
        body["pools"], body["pools_error"] = [], exc.message
    return body
