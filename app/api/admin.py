"""/cron/cleanup: the cron job's endpoint, guarded by GATEWAY_CRON_TOKEN."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from ..auth import key_matches
from ..cleanup import cleanup
from ..errors import AuthenticationError, InvalidRequestError, PermissionDenied

bp = Blueprint("admin", __name__)

MAX_DAYS = 36500


def _require_cron_token() -> None:
    token = current_app.config["GATEWAY_CRON_TOKEN"]
    if not token:
        raise PermissionDenied("Cron clean-up is disabled: set GATEWAY_CRON_TOKEN.", code="cron_disabled")
    given = request.headers.get("X-Cron-Token") or request.args.get("token") or ""
    if not given or not key_matches(given, (token,)):
        raise AuthenticationError(
            "Missing or wrong cron token (X-Cron-Token header or ?token=).", code="invalid_cron_token"
        )


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
    _require_cron_token()
    dry_run = request.args.get("dry_run", "").lower() in ("1", "true", "yes")
    return cleanup(_days(), dry_run)
