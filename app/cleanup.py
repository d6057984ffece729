"""Clean-up run by cron (POST /cron/cleanup) and by `flask cleanup-sessions`: one piece of code for both."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from flask import current_app

from . import analytics
from .analytics import recorder
from .providers import get_router
from .store import get_store
from .store.base import isoformat, utcnow


def cleanup(days: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove (or list, with dry_run) sessions not seen for `days` (default GATEWAY_SESSION_CLEANUP_DAYS).

    Also old analytics events, and the circuit records of bridges no session uses any more, idle for `days` too.
    """
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
    # A circuit record outlives the sessions that used its bridge: one no session names any more, idle as long as
    # a session the clean-up removes, goes too (the configured bridge's and providers' stay).
    gone = {(s.domain, s.session_name) for s in removed}
    in_use = [s.bridge_base_url for s in get_store().list() if (s.domain, s.session_name) not in gone]
    bridges = get_router().prune_bridges(in_use, older_than.timestamp(), dry_run)
    result["circuits"] = {"count": len(bridges), "removed": bridges}
    if recorder() is not None:
        retention = current_app.config["GATEWAY_ANALYTICS_RETENTION_DAYS"] * 86400
        path = current_app.config["GATEWAY_ANALYTICS_PATH"]
        # Old events go; the Prometheus counters stay (they must never go down).
        recorder().flush()
        events = 0 if dry_run else analytics.cleanup(path, time.time() - retention)
        result["analytics"] = {"retention_days": retention / 86400, "events_removed": events}
    return result
