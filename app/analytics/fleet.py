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
from collections.abc import Iterable
from typing import Any

from ..errors import AnalyticsError
from ..store import redis_client
from . import fleet_queries
from .fleet_batch import LAST_ERROR_SCRIPT, Batch
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
# Each push also sets this process's "applied:<process>" to the push's number, in the same transaction: after a
# push whose answer was lost, the next one reads it to learn whether Redis applied it, so nothing counts twice.
APPLIED_SECONDS = 7 * 86400


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
        self._last_error = self.client.register_script(LAST_ERROR_SCRIPT)
        self.reset()

    def reset(self) -> None:
        """Start this process's pending increments afresh (a forked child must not push its parent's)."""
        self._lock = threading.Lock()  # guards _batch and the stream count
        self._push_lock = threading.Lock()
        self._batch = Batch(MAX_PENDING_FIELDS)
        self._sent = 0  # pushes made; the number of the last one goes to Redis with it
        self._unsure: tuple[int, Batch] | None = None  # a push whose answer never came: applied or not
        self._dropped = 0  # increments that did not fit in batches already taken
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
        batch = self._batch
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
                        batch.incr(f"{self.prefix}{letter}:{start}", f"{stat}:{group}", amount)
                        if stat not in ("p", "c"):
                            batch.incr(f"{self.prefix}{letter}t:{start}", stat, amount)
        if domain is None or name is None:
            return
        member = json.dumps([domain, name], ensure_ascii=False, separators=(",", ":"))
        day = int(ts // 86400)
        key = self.prefix + "s:" + member
        if kind == "request":
            for stat, amount in (("n", 1), ("e", int(is_error(row[8], row[13]))), ("p", row[11]), ("c", row[12])):
                if amount:
                    batch.incr(key, f"{day}:{stat}", amount)
        else:  # a userscript's event (capture, heartbeat, error, info): counted per kind
            batch.incr(key, f"{day}:k:{kind}", 1)
        if kind in ("request", "capture", "error"):
            batch.later("sessions", member, ts)
        if kind in LATEST:
            batch.later(LATEST[kind], member, ts)
        if kind == "error":
            batch.incr(self.prefix + "eh:" + member, str(int(ts // 3600)), 1)
            batch.error(member, ts, row[14])

    @property
    def dropped(self) -> int:
        """Return how many increments did not fit while Redis could not be reached."""
        return self._dropped + self._batch.dropped

    def streams_open(self, count: int) -> None:
        """Note how many streams this process has open (pushed with the next increments)."""
        with self._lock:
            if count != self._streams:
                self._streams, self._streams_pushed = count, 0.0

    def due(self) -> bool:
        """Return whether push() has anything to send: increments, or an open-stream count to refresh."""
        return bool(self._batch) or self._unsure is not None or self._streams_due(time.time())

    def _streams_due(self, now: float) -> bool:
        # A count is sent when it changes, and refreshed while above zero (a zero may simply lapse).
        if self._streams is None:
            return False
        return not self._streams_pushed or (self._streams > 0 and now - self._streams_pushed >= STREAMS_REFRESH)

    def push(self) -> bool:
        """Send the pending increments in one MULTI/EXEC, exactly once; keep them while Redis cannot be reached.

        Never raises; returns whether everything pending was sent.
        """
        with self._push_lock:
            now = time.time()
            with self._lock:
                batch, self._batch = self._batch, Batch(MAX_PENDING_FIELDS)
                self._dropped, batch.dropped = self._dropped + batch.dropped, 0
                streams = self._streams if self._streams_due(now) else None
            try:
                batch = self._settle(batch)
            except self._connection_errors as exc:
                self._log_failure(exc)
                return False
            if not batch and streams is None:
                return True
            self._sent += 1
            try:
                with self.client.pipeline(transaction=True) as pipe:
                    sets_expire = math.ceil(self.retention + 86400)
                    batch.queue(pipe, self._last_error, self.prefix, lambda key: self._expires(key, now),
                                sets_expire, SCRIPT_ERROR_KEEP)  # fmt: skip
                    pipe.set(self._applied_key(), self._sent, ex=APPLIED_SECONDS)
                    if streams is not None:
                        self._streams_commands(pipe, streams, now)
                    pipe.execute()
            except self._connection_errors as exc:
                self._unsure = (self._sent, batch)  # applied or not: the next push asks Redis
                self._log_failure(exc)
                return False
            if streams is not None:
                with self._lock:
                    self._streams_pushed = now
            return True

    def _settle(self, batch: Batch) -> Batch:
        """Return batch, with the last push's added if Redis never applied it (asking Redis which, once back)."""
        if self._unsure is None:
            return batch
        number, unsure = self._unsure
        try:
            applied = int(self.client.get(self._applied_key()) or 0) >= number
        except self._connection_errors:
            with self._lock:
                self._batch.merge(batch)  # Redis is still away: keep the new ones beside, not in, the unsure push
            raise
        self._unsure = None
        if not applied:
            unsure.merge(batch)
            return unsure
        return batch

    def _applied_key(self) -> str:
        return self.prefix + "applied:" + self._process

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

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY or not self._last_log:
            self._last_log = now
            log.warning(
                "fleet analytics: Redis unavailable (%s); %d counters kept to send later, %d dropped so far",
                type(exc).__name__,
                self._batch.fields + (self._unsure[1].fields if self._unsure else 0),
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
