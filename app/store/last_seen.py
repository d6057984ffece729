"""Heartbeat times beside the JSON session store, in SQLite, so a heartbeat never rewrites the sessions file."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .. import blocking
from ..errors import StoreError
from ..storage_folder import create_private

log = logging.getLogger(__name__)

Key = tuple[str, str]


class LastSeenTable:
    """(domain, name) -> last_seen_at, newer than the registration file's when a heartbeat came since.

    WAL with synchronous=NORMAL: a crash or power cut may forget the last heartbeats (harmless: the next one comes
    within a minute) but never corrupts the file, and no heartbeat waits for an fsync.
    """

    def __init__(self, path: str, busy_timeout: float = 10.0) -> None:
        self.path, self.busy_timeout = path, busy_timeout
        # Two connections per process: reads never wait behind a writer that holds the write lock while it waits
        # for the sessions file's lock (another thread may hold that lock and be reading here).
        self._conns: dict[str, sqlite3.Connection] = {}
        self._locks = {"read": threading.Lock(), "write": threading.Lock()}
        self._pid = 0
        with self._guard():
            self._connect("write")  # a bad path fails at start-up

    def _connect(self, role: str) -> sqlite3.Connection:
        # Connections must not cross the fork Passenger's spawner does: a child opens its own.
        if self._pid != os.getpid():
            self._conns, self._pid = {}, os.getpid()
        if role not in self._conns:
            create_private(self.path)  # before SQLite would create it, and its -wal and -shm, readable by all
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=blocking.sqlite_factory(),
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS last_seen (domain TEXT NOT NULL, name TEXT NOT NULL, "
                "last_seen_at TEXT NOT NULL, PRIMARY KEY (domain, name)) WITHOUT ROWID"
            )
            self._conns[role] = conn
        return self._conns[role]

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            log.error("heartbeat table %s failed: %s", self.path, exc)
            busy = "locked" in str(exc)
            raise StoreError(
                f"{self.path} is {'busy' if busy else 'unusable'} ({exc}); retry shortly.",
                code="store_busy" if busy else "store_unavailable",
                retry_after=1 if busy else None,
            ) from None

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """Hold the table's write lock: heartbeats wait until the block ends, and its changes commit together."""
        with self._locks["write"], self._guard():
            conn = self._connect("write")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def get(self, domain: str, name: str, conn: sqlite3.Connection | None = None) -> str:
        """Return the heartbeat stamp of one session, or ""; inside writing(), pass its connection."""
        with self._locks["read"], self._guard():
            row = (
                (conn or self._connect("read"))
                .execute("SELECT last_seen_at FROM last_seen WHERE domain = ? AND name = ?", (domain, name))
                .fetchone()
            )
        return row[0] if row else ""

    def all(self, domain: str | None = None) -> dict[Key, str]:
        query, args = "SELECT domain, name, last_seen_at FROM last_seen", ()
        if domain is not None:
            query, args = query + " WHERE domain = ?", (domain,)
        with self._locks["read"], self._guard():
            return {(d, n): seen for d, n, seen in self._connect("read").execute(query, args)}

    @staticmethod
    def put(conn: sqlite3.Connection, domain: str, name: str, stamp: str) -> None:
        """Record a heartbeat inside writing(); a later stamp already there stays."""
        conn.execute(
            "INSERT INTO last_seen VALUES (?, ?, ?) ON CONFLICT (domain, name) DO UPDATE "
            "SET last_seen_at = excluded.last_seen_at WHERE excluded.last_seen_at > last_seen.last_seen_at",
            (domain, name, stamp),
        )

    @staticmethod
    def remove(conn: sqlite3.Connection, keys: list[Key]) -> None:
        """Forget the heartbeats of sessions removed, inside writing()."""
        conn.executemany("DELETE FROM last_seen WHERE domain = ? AND name = ?", keys)

    def close(self) -> None:
        if self._pid == os.getpid():
            for conn in self._conns.values():
                conn.close()
        self._conns = {}
