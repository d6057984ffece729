"""Clean-up run by cron (POST /cron/cleanup) and by `flask cleanup-sessions`: one piece of code for both."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from flask import current_app

from . import analytics
from .analytics import recorder
from .store import get_store
from .store.base import isoformat, utcnow


def cleanup(days: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove (or list, with dry_run) sessions not seen for `days` (default GATEWAY_SESSION_CLEANUP_DAYS)."""
    days = current_app.config["GATEWAY_SESSION_CLEANUP_DAYS"] if days is None else days
    older_than = utcnow() - timedelta(days=days)
    removed = get_store().cleanup(older_than=older_than, dry_run=dry_run)
    result = {
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
    if recorder() is not None:
        retention = current_app.config["GATEWAY_ANALYTICS_RETENTION_DAYS"] * 86400
        path = current_app.config["GATEWAY_ANALYTICS_PATH"]
        # Old events go; the Prometheus counters stay (they must never go down).
        recorder().flush()
        events = 0 if dry_run else analytics.cleanup(path, time.time() - retention)
        result["analytics"] = {"retention_days": retention / 86400, "events_removed": events}
    return result
