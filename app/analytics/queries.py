"""Aggregates over the analytics database for the dashboard, the JSON API, the Prometheus renderer and cron."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import AnalyticsError
from . import db
from .writer import is_error

Source = sqlite3.Connection | str | os.PathLike[str]
MAX_BUCKETS = 1000
MAX_SESSIONS = 10_000
# How far back a session's userscript errors are counted: long enough to see last night's, short enough to show now.
SCRIPT_ERROR_WINDOW = 86400
DELETE_CHUNK = 5000  # rows per cleanup transaction, so recorders wait milliseconds for the lock, not seconds


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Return the nearest-rank p-th percentile of sorted values (always an observed value), or None when empty."""
    if not ordered:
        return None
    # round() keeps 95 * 20 / 100 at rank 19, not 20 through float error.
    rank = math.ceil(round(p * len(ordered) / 100, 9))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def summary(source: Source, window_seconds: float, *, now: float | None = None) -> list[dict[str, Any]]:
    """Return per (provider, model) request counts, errors, latency p50/p95, stream TTFB p50 and tokens."""
    now = time.time() if now is None else now
    since = now - _positive(window_seconds)
    groups: dict[tuple[Any, Any], list] = {}
    with _opened(source) as conn:
        # Only the columns needed, through the ts index; each row costs ~1 µs of Python, so 100k take ~0.15 s.
        rows = conn.execute(
            "SELECT provider, model, status, error_code, latency_ms, stream, ttfb_ms, prompt_tokens, completion_tokens "
            "FROM events WHERE ts >= ? AND ts <= ? AND kind = 'request'",
            (since, now),
        )
        for provider, model, status, error_code, latency, stream, ttfb, prompt, completion in rows:
            group = groups.get((provider, model))
            if group is None:
                group = groups[(provider, model)] = [0, 0, [], [], 0, 0]
            group[0] += 1
            group[1] += is_error(status, error_code)
            if latency is not None:
                group[2].append(latency)
            if stream and ttfb is not None:
                group[3].append(ttfb)
            group[4] += prompt or 0
            group[5] += completion or 0
    result = []
    for (provider, model), (count, errors, latencies, ttfbs, prompt, completion) in groups.items():
        latencies.sort()
        ttfbs.sort()
        result.append(
            {
                "provider": provider,
                "model": model,
                "requests": count,
                "errors": errors,
                "error_rate": errors / count,
                "latency_p50_ms": percentile(latencies, 50),
                "latency_p95_ms": percentile(latencies, 95),
                "ttfb_p50_ms": percentile(ttfbs, 50),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
        )
    result.sort(key=lambda r: (r["provider"] or "", r["model"] or ""))
    return result


def sessions(
    source: Source, *, since: float | None = None, limit: int = 1000, now: float | None = None
) -> list[dict[str, Any]]:
    """Return per (domain, session_name) requests, errors, last request and tokens, most recently seen first.

    With what its userscript reported (POST /analytics/event): its last capture of LMArena ids, its errors in the
    SCRIPT_ERROR_WINDOW before now, and its last error. A session its script reported on but no request used is
    listed too, with no requests.
    """
    now = time.time() if now is None else now
    scope, scoped = "domain IS NOT NULL AND session_name IS NOT NULL", []
    if since is not None:
        scope += " AND ts >= ?"
        scoped.append(since)
    with _opened(source) as conn:
        rows = conn.execute(
            "SELECT domain, session_name, SUM(kind = 'request'), "
            "SUM(kind = 'request' AND (status >= 400 OR error_code IS NOT NULL)), "
            "MAX(CASE WHEN kind = 'request' THEN ts END), "
            "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
            "MAX(CASE WHEN kind = 'capture' THEN ts END), SUM(kind = 'error' AND ts >= ?), "
            "MAX(CASE WHEN kind = 'error' THEN ts END) "
            f"FROM events WHERE kind IN ('request', 'capture', 'error') AND {scope} "
            "GROUP BY domain, session_name ORDER BY MAX(ts) DESC, domain, session_name LIMIT ?",
            [now - SCRIPT_ERROR_WINDOW, *scoped, max(1, min(int(limit), MAX_SESSIONS))],
        ).fetchall()
        result = []
        for domain, name, requests, errors, last_request, prompt, completion, capture, script_errors, erred in rows:
            last_error = None
            if erred is not None:
                # One seek on the (domain, session_name, ts) index per session whose script reported an error.
                found = conn.execute(
                    "SELECT detail FROM events WHERE domain = ? AND session_name = ? AND ts = ? AND kind = 'error' "
                    "ORDER BY id DESC LIMIT 1",
                    (domain, name, erred),
                ).fetchone()
                last_error = {"ts": erred, "detail": _parsed(found[0] if found else None)}
            result.append(
                {
                    "domain": domain,
                    "session_name": name,
                    "requests": requests,
                    "errors": errors,
                    "last_seen": last_request,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "last_capture": capture,
                    "script_errors_24h": script_errors,
                    "last_script_error": last_error,
                }
            )
    return result


def timeseries(source: Source, window_seconds: float, buckets: int, *, now: float | None = None) -> list[dict]:
    """Return consecutive time buckets covering the window, oldest first: requests, errors, latency p50/p95."""
    now = time.time() if now is None else now
    buckets = max(1, min(int(buckets), MAX_BUCKETS))
    width = _positive(window_seconds) / buckets
    # Edges on multiples of the width keep bars still between refreshes; now falls in the last bucket.
    end = (math.floor(now / width) + 1) * width
    start = end - buckets * width
    counts = [[0, 0, []] for _ in range(buckets)]
    with _opened(source) as conn:
        rows = conn.execute(
            "SELECT ts, status, error_code, latency_ms FROM events WHERE ts >= ? AND ts < ? AND kind = 'request'",
            (start, end),
        )
        for ts, status, error_code, latency in rows:
            bucket = counts[min(int((ts - start) // width), buckets - 1)]
            bucket[0] += 1
            bucket[1] += is_error(status, error_code)
            if latency is not None:
                bucket[2].append(latency)
    result = []
    for i, (count, errors, latencies) in enumerate(counts):
        latencies.sort()
        result.append(
            {
                "start": start + i * width,
                "end": start + (i + 1) * width,
                "requests": count,
                "errors": errors,
                "latency_p50_ms": percentile(latencies, 50),
                "latency_p95_ms": percentile(latencies, 95),
            }
        )
    return result


def metrics_snapshot(source: Source) -> dict[str, Any]:
    """Return the cumulative counters, open streams of live processes, and recorder totals, for Prometheus."""
    with _opened(source) as conn:
        counter_rows = conn.execute(
            "SELECT provider, model, status, count, errors, prompt_tokens, completion_tokens, latency_count, "
            f"latency_sum, {', '.join(db.BUCKET_COLUMNS)} FROM counters ORDER BY provider, model, status"
        ).fetchall()
        stream_rows = conn.execute("SELECT pid, provider, model FROM active_streams").fetchall()
        totals = dict(conn.execute("SELECT name, value FROM totals").fetchall())
    counters = []
    for provider, model, status, count, errors, prompt, completion, latency_count, latency_sum, *cum in counter_rows:
        counters.append(
            {
                "provider": provider,
                "model": model,
                "status": status,
                "count": count,
                "errors": errors,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "latency_count": latency_count,
                "latency_sum": latency_sum,
                "latency_buckets": [*zip(db.BUCKETS, cum, strict=True), (math.inf, latency_count)],
            }
        )
    alive: dict[int, bool] = {}
    open_streams: dict[tuple[str, str], int] = {}
    for pid, provider, model in stream_rows:
        if pid not in alive:
            alive[pid] = pid_alive(pid)
        if alive[pid]:
            key = (provider or "", model or "")
            open_streams[key] = open_streams.get(key, 0) + 1
    return {
        "counters": counters,
        "active_streams": [{"provider": p, "model": m, "count": n} for (p, m), n in sorted(open_streams.items())],
        "active_streams_total": sum(open_streams.values()),
        "totals": {"dropped": totals.get("dropped", 0), "failed": totals.get("failed", 0)},
    }


def cleanup(source: Source, older_than_ts: float) -> int:
    """Delete events older than the timestamp and open streams of dead processes; return how many rows went."""
    removed = 0
    with _opened(source) as conn:
        while True:
            deleted = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? LIMIT ?)",
                (older_than_ts, DELETE_CHUNK),
            ).rowcount
            removed += deleted
            if deleted < DELETE_CHUNK:
                break
        pids = [pid for (pid,) in conn.execute("SELECT DISTINCT pid FROM active_streams").fetchall()]
        for pid in pids:
            if not pid_alive(pid):
                removed += conn.execute("DELETE FROM active_streams WHERE pid = ?", (pid,)).rowcount
    return removed


def pid_alive(pid: int) -> bool:
    """Return whether a process with this pid exists on this host (a reaped one does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


@contextmanager
def _opened(source: Source) -> Iterator[sqlite3.Connection]:
    """Use the connection given, or open the path for the duration; SQLite errors become AnalyticsError."""
    try:
        if isinstance(source, sqlite3.Connection):
            yield source
            return
        conn = db.connect(os.fspath(source))
        try:
            yield conn
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AnalyticsError(f"The analytics database cannot be read: {exc}.") from None


def _parsed(detail: str | None) -> Any:
    """Return an event's stored detail as the script sent it (JSON), or the text when it is not JSON."""
    if detail is None:
        return None
    try:
        return json.loads(detail)
    except ValueError:
        return detail


def _positive(seconds: float) -> float:
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError("window_seconds must be a positive number")
    return float(seconds)
