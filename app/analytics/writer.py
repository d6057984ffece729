"""Turn queued events into rows and counter increments, and write one batch in one transaction."""

from __future__ import annotations

import json
import math
import sqlite3
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any

from .db import BUCKET_COLUMNS, BUCKETS

EVENT_COLUMNS = (
    "ts",
    "request_id",
    "kind",
    "domain",
    "session_name",
    "provider",
    "model",
    "stream",
    "status",
    "latency_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
    "error_code",
    "detail",
)
# Labels stay short (they become Prometheus label values); detail is for small custom-event facts, never bodies.
TEXT_CAP = 256
DETAIL_CAP = 2000
_INT64 = 2**63 - 1

# Per (provider, model, status): count, errors, prompt_tokens, completion_tokens, latency_count, latency_sum, buckets.
_COUNTER_FIELDS = ("count", "errors", "prompt_tokens", "completion_tokens", "latency_count", "latency_sum")
_COUNTER_COLUMNS = _COUNTER_FIELDS + BUCKET_COLUMNS
_INSERT_EVENT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
_UPSERT_COUNTER = (
    f"INSERT INTO counters (provider, model, status, {', '.join(_COUNTER_COLUMNS)}) "
    f"VALUES (?, ?, ?, {', '.join('?' * len(_COUNTER_COLUMNS))}) "
    "ON CONFLICT (provider, model, status) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNTER_COLUMNS)
)
_ADD_TOTAL = (
    "INSERT INTO totals (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
)

Counters = dict[tuple[str, str, int], list[float]]


def is_error(status: int, error_code: str | None) -> bool:
    """Return whether a request failed: an error status, or an error reported after a 200 (a broken stream)."""
    return status >= 400 or error_code is not None


def build(batch: Iterable[tuple[float, Mapping[str, Any]]]) -> tuple[list[tuple], Counters, int]:
    """Return event rows, the counter increments they make, and how many events were unusable."""
    rows: list[tuple] = []
    counters: Counters = {}
    invalid = 0
    for stamp, event in batch:
        try:
            row = event_row(stamp, event)
        except Exception:  # one odd event (a bad __str__, a non-mapping) must not cost the whole batch
            invalid += 1
            continue
        rows.append(row)
        if row[2] == "request":
            _count(counters, row)
    return rows, counters, invalid


def event_row(stamp: float, event: Mapping[str, Any]) -> tuple:
    """Return the events row for one recorded dict; stamp is when record() was called."""
    status = _int(event.get("status")) or 0
    detail = event.get("detail")
    return (
        _float(event.get("ts")) or stamp,
        _text(event.get("request_id")),
        _text(event.get("kind")) or "request",
        _text(event.get("domain")),
        _text(event.get("session_name")),
        _text(event.get("provider")),
        _text(event.get("model")),
        1 if event.get("stream") else 0,
        status,
        _float(event.get("latency_ms")),
        _float(event.get("ttfb_ms")),
        _int(event.get("prompt_tokens")),
        _int(event.get("completion_tokens")),
        _text(event.get("error_code")),
        None if detail is None else _detail(detail),
    )


def write_batch(
    conn: sqlite3.Connection,
    rows: list[tuple],
    counters: Counters,
    *,
    pid: int,
    streams: Mapping[str, tuple[float, str | None, str | None]] | None = None,
    totals: Mapping[str, int] | None = None,
) -> None:
    """Insert rows, add counters and totals, and (when given) replace this pid's open streams, all or nothing."""
    # IMMEDIATE takes the write lock first, so contention shows up here (and is retried) rather than mid-batch.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if rows:
            conn.executemany(_INSERT_EVENT, rows)
        if counters:
            conn.executemany(_UPSERT_COUNTER, [(*key, *values) for key, values in counters.items()])
        if streams is not None:
            # The whole set each time: a lost update heals on the next one, and a reused pid's leftovers go.
            conn.execute("DELETE FROM active_streams WHERE pid = ?", (pid,))
            conn.executemany(
                "INSERT INTO active_streams (pid, stream_id, started_at, provider, model) VALUES (?, ?, ?, ?, ?)",
                [(pid, stream_id, *opened) for stream_id, opened in streams.items()],
            )
        if totals:
            conn.executemany(_ADD_TOTAL, list(totals.items()))
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _count(counters: Counters, row: tuple) -> None:
    status, latency_ms, prompt, completion, error_code = row[8], row[9], row[11], row[12], row[13]
    key = (row[5] or "", row[6] or "", status)
    values = counters.get(key)
    if values is None:
        values = counters[key] = [0] * len(_COUNTER_COLUMNS)
    values[0] += 1
    values[1] += is_error(status, error_code)
    values[2] += prompt or 0
    values[3] += completion or 0
    if latency_ms is not None:
        seconds = latency_ms / 1000
        values[4] += 1
        values[5] += seconds
        # Buckets are cumulative like Prometheus `le`: every bound at or above the value counts it.
        for i in range(bisect_left(BUCKETS, seconds), len(BUCKETS)):
            values[6 + i] += 1


def _text(value: Any, cap: int = TEXT_CAP) -> str | None:
    if value is None:
        return None
    text = (value if isinstance(value, str) else str(value))[:cap]
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate would fail the whole insert
        text = text.encode(errors="replace").decode()
    return text


def _int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -_INT64 <= number <= _INT64 else None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _detail(detail: Any) -> str:
    text = json.dumps(detail, ensure_ascii=False, default=str, separators=(",", ":"))
    if len(text) > DETAIL_CAP:
        # Still JSON: the prefix becomes a string (escaping at most doubles it, so this stays near the cap).
        text = json.dumps({"truncated": text[: DETAIL_CAP // 2]}, ensure_ascii=False)
    return _text(text, DETAIL_CAP + 64) or ""
