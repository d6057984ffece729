"""Fleet analytics: per-minute, hour and day aggregates in Redis, so every instance's dashboard sees them all."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import AnalyticsError
from ..store import redis_client
from . import fleet_queries
from .writer import is_error

log = logging.getLogger(__name__)

# Each (resolution, start) has two hashes: per provider and model ("n:<group>", "l7:<group>", where the group is
# JSON [provider, model]) and the same figures summed over all groups (the charts read only those).
RESOLUTIONS = {60: "m", 3600: "h", 86400: "d"}
# Latency and time-to-first-content histograms: quarter-octave buckets (each bound 2^(1/4) times the one before),
# 1 ms to 2^20 ms (17 min); index len(BOUNDS_MS) holds anything longer. A percentile read back is within 9 %.
BOUNDS_MS: tuple[float, ...] = tuple(2 ** (i / 4) for i in range(81))
# What one process keeps while Redis cannot be reached: the increments of about a day of busy traffic.
MAX_PENDING_FIELDS = 200_000
STREAMS_TTL = 30.0  # a process that stops refreshing its open-stream count (killed) drops out of the total
STREAMS_REFRESH = 10.0
LOG_EVERY = 60.0
# Per session: the index of sessions by their latest request, capture or script error ("sessions"), the latest
# request ("last:request") and capture ("last:capture") by themselves, script errors per hour ("eh:<member>", kept
# two days) and the latest script error with its detail ("e:<member>", replaced only by a later one).
LATEST = {"request": "last:request", "capture": "last:capture"}
SCRIPT_ERROR_KEEP = 2 * 86400
_LAST_ERROR = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(cjson.decode(current)['ts']) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def _as_sent(detail: str | None) -> Any:
    """Return an event's stored detail (JSON text, writer.event_row) as the script sent it, as queries.sessions does."""
    try:
        return None if detail is None else json.loads(detail)
    except ValueError:
        return detail


def latency_bucket(ms: float) -> int:
    """Return the histogram index of a duration in milliseconds."""
    return bisect_left(BOUNDS_MS, ms)


class FleetAnalytics:
    """Add each event to Redis counters (batched per process, kept while Redis is down); read them back."""

    def __init__(self, url: str, retention_days: float, timeout: float, prefix: str = "lmgw:") -> None:
        import redis  # only deployments that choose Redis need the package

        self._connection_errors = (redis.exceptions.RedisError, OSError)
        self.client = redis_client.connect(url, timeout)
        self.prefix = prefix + "an:"
        self.retention = retention_days * 86400
        self.dropped = 0
        self._last_error = self.client.register_script(_LAST_ERROR)
        self.reset()

    def reset(self) -> None:
        """Start this process's pending increments afresh (a forked child must not push its parent's)."""
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, int]] = {}
        self._latest: dict[str, dict[str, float]] = {}  # sorted set -> session member -> latest time
        self._script_errors: dict[str, tuple[float, str | None]] = {}  # member -> latest script error, detail
        self._fields = 0
        self._streams: int | None = None  # this process's open streams, once known
        self._streams_pushed = 0.0
        self._process = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._last_log = 0.0

    # -- writing ------------------------------------------------------------------------------------------------

    def add(self, rows: Iterable[tuple]) -> None:
        """Merge event rows (writer.event_row) into this process's pending increments."""
        with self._lock:
            for row in rows:
                self._add(row)

    def _add(self, row: tuple) -> None:
        ts, kind, domain, name = row[0], row[2], row[3], row[4]
        if kind == "request":
            provider, model, stream, status, latency, ttfb = row[5], row[6], row[7], row[8], row[9], row[10]
            prompt, completion, error_code = row[11] or 0, row[12] or 0, row[13]
            group = json.dumps([provider, model], ensure_ascii=False, separators=(",", ":"))
            figures = {"n": 1, "e": int(is_error(status, error_code)), "p": prompt, "c": completion}
            if latency is not None:
                figures[f"l{latency_bucket(latency)}"] = 1
            if stream and ttfb is not None:
                figures[f"t{latency_bucket(ttfb)}"] = 1
            for width, letter in RESOLUTIONS.items():
                start = int(ts // width * width)
                for stat, amount in figures.items():
                    if amount:
                        self._incr(f"{self.prefix}{letter}:{start}", f"{stat}:{group}", amount)
                        if stat not in ("p", "c"):
                            self._incr(f"{self.prefix}{letter}t:{start}", stat, amount)
        if domain is None or name is None:
            return
        member = json.dumps([domain, name], ensure_ascii=False, separators=(",", ":"))
        day = int(ts // 86400)
        key = self.prefix + "s:" + member
        if kind == "request":
            for stat, amount in (("n", 1), ("e", int(is_error(row[8], row[13]))), ("p", row[11]), ("c", row[12])):
                if amount:
                    self._incr(key, f"{day}:{stat}", amount)
        else:  # a userscript's event (capture, heartbeat, error, info): counted per kind
            self._incr(key, f"{day}:k:{kind}", 1)
        if kind in ("request", "capture", "error"):
            self._later("sessions", member, ts)
        if kind in LATEST:
            self._later(LATEST[kind], member, ts)
        if kind == "error":
            self._incr(self.prefix + "eh:" + member, str(int(ts // 3600)), 1)
            if ts >= self._script_errors.get(member, (-math.inf, None))[0]:
                self._script_errors[member] = (ts, row[14])

    def _later(self, index: str, member: str, ts: float) -> None:
        members = self._latest.setdefault(index, {})
        members[member] = max(ts, members.get(member, -math.inf))

    def _incr(self, key: str, field: str, amount: int) -> None:
        fields = self._pending.get(key)
        if fields is None or field not in fields:
            if self._fields >= MAX_PENDING_FIELDS:
                self.dropped += 1
                return
            self._fields += 1
            fields = self._pending.setdefault(key, {})
            fields[field] = 0
        fields[field] += int(amount)

    def streams_open(self, count: int) -> None:
        """Note how many streams this process has open (pushed with the next increments)."""
        with self._lock:
            if count != self._streams:
                self._streams, self._streams_pushed = count, 0.0

    def due(self) -> bool:
        """Return whether push() has anything to send: increments, or an open-stream count to refresh."""
        return bool(self._pending or self._latest or self._script_errors) or self._streams_due(time.time())

    def _streams_due(self, now: float) -> bool:
        # A count is sent when it changes, and refreshed while above zero (a zero may simply lapse).
        if self._streams is None:
            return False
        return not self._streams_pushed or (self._streams > 0 and now - self._streams_pushed >= STREAMS_REFRESH)

    def push(self) -> bool:
        """Send the pending increments in one MULTI/EXEC; on failure keep them for the next call. Never raises."""
        now = time.time()
        with self._lock:
            pending, latest, errors = self._pending, self._latest, self._script_errors
            self._pending, self._latest, self._script_errors, self._fields = {}, {}, {}, 0
            streams = self._streams if self._streams_due(now) else None
        if not pending and not latest and not errors and streams is None:
            return True
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for key, fields in pending.items():
                    for field, amount in fields.items():
                        pipe.hincrby(key, field, amount)
                    pipe.expireat(key, math.ceil(self._expires(key, now)))
                for index, members in latest.items():
                    pipe.zadd(self.prefix + index, members, gt=True)
                    pipe.expire(self.prefix + index, math.ceil(self.retention + 86400))
                for member, (ts, detail) in errors.items():
                    record = json.dumps({"ts": ts, "detail": _as_sent(detail)}, ensure_ascii=False)
                    self._last_error([self.prefix + "e:" + member], [ts, record, SCRIPT_ERROR_KEEP], client=pipe)
                if streams is not None:
                    self._streams_commands(pipe, streams, now)
                pipe.execute()
        except self._connection_errors as exc:
            self._keep(pending, latest, errors)
            self._log_failure(exc)
            return False
        if streams is not None:
            with self._lock:
                self._streams_pushed = now
        return True

    def _expires(self, key: str, now: float) -> float:
        """Return when a key may go: a bucket once it is older than the retention, a session's hash once idle."""
        kind, _, start = key[len(self.prefix) :].partition(":")
        if kind == "eh":
            return now + SCRIPT_ERROR_KEEP
        width = next((w for w, letter in RESOLUTIONS.items() if kind in (letter, letter + "t")), None)
        if width is None:
            return now + self.retention + 86400
        return int(start) + width + self.retention

    def _streams_commands(self, pipe: Any, streams: int, now: float) -> None:
        key, procs = self.prefix + "streams:" + self._process, self.prefix + "procs"
        pipe.set(key, streams, ex=math.ceil(STREAMS_TTL))
        pipe.zadd(procs, {self._process: now + STREAMS_TTL})
        pipe.zremrangebyscore(procs, "-inf", now)

    def _keep(self, pending: Mapping[str, Mapping[str, int]], latest: dict, errors: dict) -> None:
        """Put what could not be sent back beside what was recorded meanwhile."""
        with self._lock:
            for key, fields in pending.items():
                for field, amount in fields.items():
                    self._incr(key, field, amount)
            for index, members in latest.items():
                for member, ts in members.items():
                    self._later(index, member, ts)
            for member, (ts, detail) in errors.items():
                if ts >= self._script_errors.get(member, (-math.inf, None))[0]:
                    self._script_errors[member] = (ts, detail)

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY or not self._last_log:
            self._last_log = now
            log.warning(
                "fleet analytics: Redis unavailable (%s); %d counters kept to send later, %d dropped so far",
                type(exc).__name__,
                self._fields,
                self.dropped,
            )

    def close(self) -> None:
        """Send what is pending and take this process's open streams out of the fleet's total."""
        self.push()
        try:
            self.client.delete(self.prefix + "streams:" + self._process)
            self.client.zrem(self.prefix + "procs", self._process)
        except self._connection_errors:
            pass

    # -- reading (the same interface as sources.LocalSource) ------------------------------------------------------

    def __enter__(self) -> FleetAnalytics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def summary(self, window_seconds: float, *, now: float | None = None) -> list[dict[str, Any]]:
        """Return the fleet's per (provider, model) figures over the window (to the minute)."""
        return self._read(fleet_queries.summary, window_seconds, now=now)

    def timeseries(self, window_seconds: float, buckets: int, *, now: float | None = None) -> list[dict]:
        """Return the fleet's requests, errors and latency p50/p95 in consecutive buckets (whole minutes)."""
        return self._read(fleet_queries.timeseries, window_seconds, buckets, now=now)

    def sessions(
        self, *, since: float | None = None, limit: int = 1000, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Return the fleet's per-session figures within the retention, most recently active first."""
        return self._read(fleet_queries.sessions, since=since, limit=limit, now=now)

    def active_streams(self) -> int:
        """Return how many streams the fleet's processes have open (as of their last refresh)."""
        return self._read(fleet_queries.active_streams)

    def cleanup(self, older_than_ts: float) -> int:
        """Drop session figures older than the timestamp (buckets expire by themselves); return how many went."""
        return self._read(fleet_queries.cleanup, older_than_ts)

    def _read(self, query, *args, **kwargs):
        try:
            return query(self.client, self.prefix, self.retention, *args, **kwargs)
        except self._connection_errors as exc:
            raise AnalyticsError(f"Redis is unavailable for fleet analytics ({type(exc).__name__}).") from None
