"""Where in-flight leases live: a table in SQLite, or a sorted set per key in Redis; every process shares them."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable

from .. import blocking
from ..storage_folder import open_counts
from . import redis_client


class SQLiteSlots:
    """Leases as rows of a small SQLite table; one short transaction per change, safe across processes."""

    def __init__(self, path: str, busy_timeout: float = 2.0) -> None:
        self.path, self.busy_timeout = path, busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._connect()  # a bad path fails at start-up, not on the first request

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = open_counts(
                self.path,
                self.busy_timeout,
                "CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, key TEXT NOT NULL, expires REAL)",
                "CREATE INDEX IF NOT EXISTS leases_by_key ON leases (key, expires)",
                factory=blocking.sqlite_factory(),
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def take(self, key: str, lease_id: str, limit: int, now: float, expires: float) -> bool:
        """Add a lease for key unless limit unexpired ones exist; return whether it was added."""
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM leases WHERE key = ? AND expires < ?", (key, now))
                (count,) = conn.execute("SELECT COUNT(*) FROM leases WHERE key = ?", (key,)).fetchone()
                if count < limit:
                    conn.execute("INSERT INTO leases (id, key, expires) VALUES (?, ?, ?)", (lease_id, key, expires))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return count < limit

    def give_back(self, key: str, lease_id: str) -> None:
        """Remove a lease."""
        with self._lock:
            self._connect().execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def renew(self, held: Iterable[tuple[str, str]], now: float, expires: float) -> None:
        """Move the held leases' expiry to expires (a lease already gone stays gone); drop every expired one."""
        ids = [(expires, lease_id) for _, lease_id in held]
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("UPDATE leases SET expires = ? WHERE id = ?", ids)
                conn.execute("DELETE FROM leases WHERE expires < ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


# Atomic in Redis: drop the key's expired leases, add one if fewer than the limit remain, keep the set while it lives.
_REDIS_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisSlots:
    """Leases as members of a sorted set per key, scored by their expiry."""

    def __init__(self, url: str, prefix: str = "lmgw:inflight:", timeout: float = 2.0) -> None:
        self.client = redis_client.connect(url, timeout)
        self.prefix = prefix
        self._take = self.client.register_script(_REDIS_TAKE)

    def take(self, key: str, lease_id: str, limit: int, now: float, expires: float) -> bool:
        """Add a lease for key unless limit unexpired ones exist; return whether it was added."""
        keep_ms = str(int((expires - now) * 1000) + 1000)
        args = [repr(now), repr(expires), str(limit), lease_id, keep_ms]
        return bool(self._take(keys=[self.prefix + key], args=args))

    def give_back(self, key: str, lease_id: str) -> None:
        """Remove a lease."""
        self.client.zrem(self.prefix + key, lease_id)

    def renew(self, held: Iterable[tuple[str, str]], now: float, expires: float) -> None:
        """Move the held leases' expiry to expires (a lease already gone stays gone)."""
        pipe = self.client.pipeline(transaction=False)
        keep_ms = int((expires - now) * 1000) + 1000
        for key, lease_id in held:
            pipe.zadd(self.prefix + key, {lease_id: expires}, xx=True)
            pipe.pexpire(self.prefix + key, keep_ms)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
