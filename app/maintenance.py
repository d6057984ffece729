"""Clean-up run by cron (POST /cron/cleanup) and by `flask cleanup-sessions`: one piece of code for both."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app

from .store import get_store
from .store.base import isoformat, utcnow


def cleanup(days: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove (or list, with dry_run) sessions not seen for `days` (default GATEWAY_SESSION_CLEANUP_DAYS)."""
    days = current_app.config["GATEWAY_SESSION_CLEANUP_DAYS"] if days is None else days
    older_than = utcnow() - timedelta(days=days)
    removed = get_store().cleanup(older_than=older_than, dry_run=dry_run)
    return {
        "dry_run": dry_run,
        "days": days,
        "older_than": isoformat(older_than),
        "sessions": {
            "count": len(removed),
            "removed": [
                {"domain": s.domain, "session_name": s.session_name, "last_seen_at": s.last_seen_at} for s in removed
            ],
        },
    }
