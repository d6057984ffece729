"""Requests per minute per client key on /v1, counted across every process (SQLite beside the sessions, or Redis)."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from flask import Flask, after_this_request, current_app, request

from . import blocking
from .auth import provided_key
from .config import ConfigError, storage_file
from .errors import RateLimitError
from .storage_folder import open_counts
from .store import redis_client

log = logging.getLogger(__name__)

FILE_NAME = "ratelimit.sqlite3"
PRUNE_EVERY = 1000  # checks per process between deletions of keys idle for a while
WARN_EVERY = 60.0  # seconds between log lines while the shared state cannot be used


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after: float  # seconds until one more request would pass (0 when allowed)
    reset_after: float  # seconds until the full burst is available again


class Limiter:
    """GCRA: each key keeps one number, the theoretical arrival time; the pace is per_minute, bursts up to burst.

    A process takes a lease of several requests from the shared count at once (a tenth of the burst, at most 50 ms
    worth), spends it locally and hands back what it left unused when the lease lapses, so the shared file or
    Redis is touched once per lease, not once per request. Leases only ever take what the shared count allows, so
    together the processes never pass more than the limit.
    """

    def __init__(self, per_minute: int, burst: int, cells) -> None:
        self.per_minute = per_minute
        self.burst = burst or max(1, per_minute // 10)
        self.interval = 60.0 / per_minute
        self.window = self.interval * self.burst  # how far ahead of now the arrival time may run
        # A tenth of the burst, but at most 50 ms worth: what the processes hold unused at any time stays small.
        # perf: a shared transaction per request was 26% of busy samples at c=8 (bench/ profiles); a lease makes a
        # check ~2 us instead of ~48 us. tests/test_ratelimit.py checks the processes still never pass the burst.
        self.lease = max(1, min(self.burst // 10, int(0.05 / self.interval)))
        # Unused leased requests lapse: a process must not sit on allowance it took long ago.
        self.lease_seconds = max(1.0, self.lease * self.interval)
        self.cells = cells
        self._leases: dict[str, list[float]] = {}  # key -> [requests left, lapses at, shared remaining then]
        self._lock = threading.Lock()
        self._warned = 0.0

    def check(self, key: str, now: float | None = None) -> Decision:
        """Count one request for key; return whether it may pass and what to tell the client."""
        now = time.time() if now is None else now
        # One thread at a time takes a lease: threads that each took one at once would waste the allowance.
        with self._lock:
            held = self._leases.get(key)
            if held and held[0] >= 1 and now < held[1]:
                held[0] -= 1
                return Decision(True, int(held[0] + held[2]), 0.0, held[1] - now)
            # What a lapsed lease left unused goes back to the shared count: taken but never spent.
            refund = int(held[0]) if held else 0
            try:
                granted, tat = self.cells.advance(key, now, self.interval, self.window, self.lease, refund)
            except Exception as exc:  # noqa: BLE001 - a broken limiter must not take /v1 down with it
                if time.monotonic() - self._warned > WARN_EVERY:
                    self._warned = time.monotonic()
                    log.warning("rate limit state unavailable, letting requests through: %s", type(exc).__name__)
                return Decision(True, self.burst, 0.0, 0.0)
            ahead = max(0.0, tat - now)
            self._leases.pop(key, None)  # refunded above
            if not granted:
                return Decision(False, 0, ahead + self.interval - self.window, ahead)
            shared_left = int((self.window - ahead) / self.interval + 1e-6)
            self._leases[key] = [granted - 1, now + self.lease_seconds, shared_left]
        return Decision(True, granted - 1 + shared_left, 0.0, ahead)

    def close(self) -> None:
        self.cells.close()


def fits(tat: float, now: float, interval: float, window: float, want: int) -> int:
    """Return how many of want requests fit under the window now, given the key's arrival time tat."""
    ahead = max(tat, now) - now
    return max(0, min(want, int((window - ahead) / interval + 1e-6)))  # epsilon: 2.9999999 is 3 requests


class SQLiteCells:
    """Arrival times in a small SQLite file; one short write transaction per request, safe across processes."""

    def __init__(self, path: str, busy_timeout: float = 2.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._checks = 0
        self._connect()  # a bad path fails at start-up, not on the first request

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            schema = "CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, tat REAL NOT NULL)"
            conn = open_counts(self.path, self.busy_timeout, schema, factory=blocking.sqlite_factory())
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def advance(
        self, key: str, now: float, interval: float, window: float, want: int = 1, refund: int = 0
    ) -> tuple[int, float]:
        """Hand back refund requests, take up to want for key; return how many were granted and the arrival time."""
        # Plain SELECT + INSERT OR REPLACE, not UPSERT/RETURNING: hosting Pythons may link an old SQLite.
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT tat FROM cells WHERE key = ?", (key,)).fetchone()
                tat = max((row[0] if row else now) - refund * interval, now)
                granted = fits(tat, now, interval, window, want)
                if granted or refund:
                    tat += granted * interval
                    conn.execute("INSERT OR REPLACE INTO cells (key, tat) VALUES (?, ?)", (key, tat))
                self._checks += 1
                if self._checks % PRUNE_EVERY == 0:
                    conn.execute("DELETE FROM cells WHERE tat < ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return granted, tat

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


# Atomic in Redis: take back a refund, move the arrival time on by what fits, expire the key once it is past.
_REDIS_GCRA = """
local now, interval, window, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1]) - tonumber(ARGV[5]) * interval
if tat < now then tat = now end
local granted = math.min(want, math.floor((window - (tat - now)) / interval + 1e-6))
if granted < 0 then granted = 0 end
tat = tat + granted * interval
if granted > 0 or tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
return {granted, tostring(tat)}
"""


class RedisCells:
    """Arrival times as Redis keys, moved on by one Lua script per request."""

    def __init__(self, url: str, prefix: str = "lmgw:ratelimit:", timeout: float = 2.0) -> None:
        self.client = redis_client.connect(url, timeout)
        self.prefix = prefix
        self._script = self.client.register_script(_REDIS_GCRA)

    def advance(
        self, key: str, now: float, interval: float, window: float, want: int = 1, refund: int = 0
    ) -> tuple[int, float]:
        """Hand back refund requests, take up to want for key; return how many were granted and the arrival time."""
        args = [repr(now), repr(interval), repr(window), str(want), str(refund)]
        granted, tat = self._script(keys=[self.prefix + key], args=args)
        return int(granted), float(tat)

    def close(self) -> None:
        self.client.close()


def init_app(app: Flask) -> None:
    """Set up the shared limiters: /v1 when GATEWAY_RATE_LIMIT_PER_MINUTE is above zero, userscript events when
    GATEWAY_EVENT_RATE_PER_MINUTE is."""
    config = app.config
    app.extensions["ratelimit"] = None
    app.extensions["event_limit"] = None
    on = [name for name in ("GATEWAY_RATE_LIMIT_PER_MINUTE", "GATEWAY_EVENT_RATE_PER_MINUTE") if config[name]]
    if not on:
        return
    # One set of cells for both: their keys never meet (events' start with "event:").
    cells = _cells(config, on[0])
    if config["GATEWAY_RATE_LIMIT_PER_MINUTE"]:
        app.extensions["ratelimit"] = Limiter(
            config["GATEWAY_RATE_LIMIT_PER_MINUTE"], config["GATEWAY_RATE_LIMIT_BURST"], cells
        )
    if config["GATEWAY_EVENT_RATE_PER_MINUTE"]:
        per_minute = config["GATEWAY_EVENT_RATE_PER_MINUTE"]
        # A minute's worth at once: a tab reports in bursts (a capture, an error, a retry), then rarely.
        app.extensions["event_limit"] = Limiter(per_minute, per_minute, cells)


def _cells(config, setting: str):
    if config["SESSION_STORE"] == "redis":
        return RedisCells(config["REDIS_URL"], timeout=config["GATEWAY_STORE_LOCK_TIMEOUT"])
    path = storage_file(config, FILE_NAME)
    try:
        return SQLiteCells(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"{setting}: the rate limit file {path} cannot be used: {exc}.") from None


def identity() -> str:
    """Return whom this request counts against: its client key (hashed; keys are never stored), else its address."""
    key = provided_key() if current_app.config["GATEWAY_API_KEYS"] else ""
    if key:
        return "key:" + _digest(key)
    return "addr:" + (request.remote_addr or "unknown")


def limit_client() -> None:
    """Refuse a /v1 request over its key's rate with 429 and Retry-After; tell every answer what is left."""
    limiter: Limiter | None = current_app.extensions.get("ratelimit")
    if limiter is None or request.method == "OPTIONS":
        return
    decision = limiter.check(identity())
    # The headers OpenAI sends, so clients that pace themselves by them work here too.
    headers = {
        "x-ratelimit-limit-requests": str(limiter.per_minute),
        "x-ratelimit-remaining-requests": str(decision.remaining),
        "x-ratelimit-reset-requests": f"{decision.reset_after:.3f}s",
    }
    if not decision.allowed:
        error = RateLimitError(
            f"Rate limit reached: {limiter.per_minute} requests per minute for this API key. "
            f"Try again in {decision.retry_after:.1f} s.",
            retry_after=max(1.0, math.ceil(decision.retry_after)),
        )
        error.headers = {**headers, "retry-after-ms": str(math.ceil(decision.retry_after * 1000))}
        raise error

    @after_this_request
    def tell(response):
        response.headers.update(headers)
        return response


def limit_events(token: str) -> None:
    """Refuse a userscript event past GATEWAY_EVENT_RATE_PER_MINUTE for its token (or, open, its address)."""
    limiter: Limiter | None = current_app.extensions.get("event_limit")
    if limiter is None:
        return
    who = "token:" + _digest(token) if token else "addr:" + (request.remote_addr or "unknown")
    # The cells are shared with the /v1 limit: a prefix keeps the two counts apart.
    decision = limiter.check("event:" + who)
    if not decision.allowed:
        raise RateLimitError(
            f"Too many userscript events: {limiter.per_minute} per minute per script. "
            f"Try again in {decision.retry_after:.1f} s.",
            retry_after=max(1.0, math.ceil(decision.retry_after)),
        )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:32]
