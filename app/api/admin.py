"""/cron/cleanup: the cron job's endpoint, guarded by GATEWAY_CRON_TOKEN."""

from __future__ import annotations

from flask import Blueprint, request

from ..auth import CRON, Guard
from ..cleanup import cleanup
from ..errors import InvalidRequestError

bp = Blueprint("admin", __name__)
bp.before_request(Guard(CRON))

MAX_DAYS = 36500


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes")


def _days(everything: bool, dry_run: bool) -> float | None:
    raw = request.args.get("days")
    days = None
    if raw is not None:
        try:
            days = float(raw)
        except ValueError:
            days = -1.0
        if not 0 <= days <= MAX_DAYS:
            raise InvalidRequestError(f"'days' must be a number from 0 to {MAX_DAYS}.", param="days")
    if everything:
        if days not in (None, 0):
            raise InvalidRequestError("'all=1' removes every session; leave 'days' out.", param="all")
        return 0.0
    # 0 days is every session, active ones included: too much to take from a slip.
    if days == 0 and not dry_run:
        raise InvalidRequestError(
            "'days=0' removes every session, active ones too: add all=1 to mean it.", param="days"
        )
    return days


# GET too: a cron line is usually a bare `curl URL`.
@bp.route("/cron/cleanup", methods=["GET", "POST"])
def cron_cleanup():
    """Remove sessions not seen for GATEWAY_SESSION_CLEANUP_DAYS (?days=N, ?all=1, ?dry_run=1); say what went."""
    dry_run = _flag("dry_run")
    return cleanup(_days(_flag("all"), dry_run), dry_run)
