"""Read the fleet's aggregates back from Redis, in the shapes queries.py gives from this machine's SQLite file."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from . import fleet, queries

MAX_SESSIONS = 10_000
# A bucket's figures stand for its geometric middle: within 2^(1/8) (9 %) of every duration it holds.
_HALF_STEP = 2 ** (-1 / 8)


def cover(start: int, end: int) -> list[tuple[int, int]]:
    """Return (width, start) buckets exactly covering [start, end), both whole minutes: days, hours, minutes."""
    parts, at = [], start
    while at < end:
        width = next(w for w in sorted(fleet.RESOLUTIONS, reverse=True) if at % w == 0 and at + w <= end)
        parts.append((width, at))
        at += width
    return parts


def representative(index: int) -> float:
    """Return the duration in ms a histogram bucket's figures are read back as."""
    bounds = fleet.BOUNDS_MS
    return round(bounds[-1] if index >= len(bounds) else bounds[index] * _HALF_STEP, 3)


def percentile(figures: dict[str, int], letter: str, p: float) -> float | None:
    """Return the nearest-rank p-th percentile of the histogram whose fields start with letter, or None if empty."""
    counts = sorted((int(stat[1:]), n) for stat, n in figures.items() if stat[0] == letter and stat[1:].isdigit())
    total = sum(n for _, n in counts)
    if not total:
        return None
    rank = min(max(math.ceil(round(p * total / 100, 9)), 1), total)  # as queries.percentile
    seen = 0
    for index, n in counts:
        seen += n
        if seen >= rank:
            return representative(index)
    return representative(counts[-1][0])  # not reached


def summary(client, prefix: str, retention: float, window_seconds: float, *, now: float | None = None) -> list[dict]:
    """Return per (provider, model) requests, errors, latency p50/p95, stream TTFB p50 and tokens, to the minute."""
    now = time.time() if now is None else now
    start, end = int((now - _positive(window_seconds)) // 60 * 60), int(now // 60 * 60) + 60
    keys = [f"{prefix}{fleet.RESOLUTIONS[width]}:{at}" for width, at in cover(start, end)]
    groups: dict[str, dict[str, int]] = {}
    for fields in _fetch(client, keys):
        for field, value in fields.items():
            stat, _, group = field.partition(":")
            figures = groups.setdefault(group, {})
            figures[stat] = figures.get(stat, 0) + int(value)
    result = []
    for group, figures in groups.items():
        count, errors = figures.get("n", 0), figures.get("e", 0)
        if not count:
            continue
        provider, model = json.loads(group)
        result.append(
            {
                "provider": provider,
                "model": model,
                "requests": count,
                "errors": errors,
                "error_rate": errors / count,
                "latency_p50_ms": percentile(figures, "l", 50),
                "latency_p95_ms": percentile(figures, "l", 95),
                "ttfb_p50_ms": percentile(figures, "t", 50),
                "prompt_tokens": figures.get("p", 0),
                "completion_tokens": figures.get("c", 0),
            }
        )
    result.sort(key=lambda r: (r["provider"] or "", r["model"] or ""))
    return result


def timeseries(
    client, prefix: str, retention: float, window_seconds: float, buckets: int, *, now: float | None = None
) -> list[dict]:
    """Return consecutive buckets covering the window, oldest first, as queries.timeseries (minutes whole)."""
    now = time.time() if now is None else now
    buckets = max(1, min(int(buckets), 1000))
    width = _positive(window_seconds) / buckets
    end = (math.floor(now / width) + 1) * width
    start = end - buckets * width
    spans, keys = [], []
    for i in range(buckets):
        # A minute belongs to the bucket its start falls in.
        low, high = math.ceil((start + i * width) / 60) * 60, math.ceil((start + (i + 1) * width) / 60) * 60
        parts = cover(low, high) if high > low else []
        spans.append((len(keys), len(keys) + len(parts)))
        keys += [f"{prefix}{fleet.RESOLUTIONS[w]}t:{at}" for w, at in parts]
    fetched = _fetch(client, keys)
    result = []
    for i, (first, last) in enumerate(spans):
        figures: dict[str, int] = {}
        for fields in fetched[first:last]:
            for stat, value in fields.items():
                figures[stat] = figures.get(stat, 0) + int(value)
        result.append(
            {
                "start": start + i * width,
                "end": start + (i + 1) * width,
                "requests": figures.get("n", 0),
                "errors": figures.get("e", 0),
                "latency_p50_ms": percentile(figures, "l", 50),
                "latency_p95_ms": percentile(figures, "l", 95),
            }
        )
    return result


def sessions(
    client, prefix: str, retention: float, *, since: float | None = None, limit: int = 1000, now: float | None = None
) -> list[dict[str, Any]]:
    """Return per (domain, session_name) requests, errors, last request and tokens within the retention (whole
    days), with its userscript's last capture, its errors in the last 24 hours (whole hours) and its last error."""
    now = time.time() if now is None else now
    low = now - retention if since is None else max(since, now - retention)
    limit = max(1, min(int(limit), MAX_SESSIONS))
    members = client.zrevrangebyscore(prefix + "sessions", "+inf", low, start=0, num=limit, withscores=True)
    with client.pipeline(transaction=False) as pipe:
        for member, _ in members:
            pipe.hgetall(prefix + "s:" + member)
            pipe.zscore(prefix + fleet.LATEST["request"], member)
            pipe.zscore(prefix + fleet.LATEST["capture"], member)
            pipe.hgetall(prefix + "eh:" + member)
            pipe.get(prefix + "e:" + member)
        fetched = pipe.execute() if members else []
    first_day, first_hour = int(low // 86400), int((now - queries.SCRIPT_ERROR_WINDOW) // 3600)
    rows = []
    for i, (member, active) in enumerate(members):
        days, last_request, last_capture, hours, last_error = fetched[5 * i : 5 * i + 5]
        totals = {"n": 0, "e": 0, "p": 0, "c": 0}
        for field, value in days.items():
            day, _, stat = field.partition(":")
            if stat in totals and int(day) >= first_day:
                totals[stat] += int(value)
        error = json.loads(last_error) if last_error else None
        domain, name = json.loads(member)
        rows.append(
            {
                "domain": domain,
                "session_name": name,
                "requests": totals["n"],
                "errors": totals["e"],
                "last_seen": last_request,
                "prompt_tokens": totals["p"],
                "completion_tokens": totals["c"],
                "last_capture": last_capture,
                "script_errors_24h": sum(int(n) for hour, n in hours.items() if int(hour) >= first_hour),
                "last_script_error": error,
                "_active": active,
            }
        )
    rows.sort(key=lambda r: (-r.pop("_active"), r["domain"], r["session_name"]))
    return rows


def active_streams(client, prefix: str, retention: float) -> int:
    """Return the open streams the fleet's live processes last reported."""
    processes = client.zrangebyscore(prefix + "procs", time.time(), "+inf")
    if not processes:
        return 0
    counts = client.mget([prefix + "streams:" + process for process in processes])
    return sum(int(count) for count in counts if count is not None)


def cleanup(client, prefix: str, retention: float, older_than_ts: float) -> int:
    """Remove sessions' figures of days before the timestamp, and older latest times; return how many went."""
    removed = 0
    for index in ("sessions", *fleet.LATEST.values()):
        removed += client.zremrangebyscore(prefix + index, "-inf", f"({older_than_ts}")
    first_day = int(older_than_ts // 86400)
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix + "s:") + "*"
    for key in client.scan_iter(match=pattern, count=500):
        old = [field for field in client.hkeys(key) if int(field.partition(":")[0]) < first_day]
        if old:
            removed += client.hdel(key, *old)
    return removed


def _fetch(client, keys: list[str]) -> list[dict[str, str]]:
    if not keys:
        return []
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute()


def _positive(seconds: float) -> float:
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError("window_seconds must be a positive number")
    return float(seconds)
