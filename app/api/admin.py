"""/cron/cleanup: the cron job's endpoint, guarded by GATEWAY_CRON_TOKEN."""

from __future__ import annotations

from flask import Blueprint, request

from ..auth import CRON, Guard
from ..cleanup import cleanup
from ..errors import InvalidRequestError

bp = Blueprint("admin", __name__)
bp.before_request(Guard(CRON))

MAX_DAYS = 36500


def _days() -> float | None:
    raw = request.args.get("days")
    if raw is None:
        return None
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not 0 <= days <= MAX_DAYS:
        raise InvalidRequestError(f"'days' must be a number from 0 to {MAX_DAYS}.", param="days")
    return days


# GET too: a cron line is usually a bare `curl URL`.
@bp.route("/cron/cleanup", methods=["GET", "POST"])
def cron_cleanup():
    """Remove sessions not seen for GATEWAY_SESSION_CLEANUP_DAYS (?days=N, ?dry_run=1); say what went."""
    dry_run = request.args.get("dry_run", "").lower() in ("1", "true", "yes")
    return cleanup(_days(), dry_run)
