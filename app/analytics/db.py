"""The analytics SQLite file: private, WAL, and a schema that several processes may create at the same moment."""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import suppress

from .. import blocking
from ..errors import AnalyticsError
from ..storage_folder import create_private

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Latency histogram upper bounds in seconds (Prometheus `le`); +Inf is latency_count. A change is a schema change.
BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BUCKET_COLUMNS: tuple[str, ...] = tuple("le_" + format(b, "g").replace(".", "_") for b in BUCKETS)
BUSY_TIMEOUT = 5.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Switching a new file to WAL fails at once (no busy handler) while another process does the same: retry briefly.
SETUP_DEADLINE = 10.0

# counters: cumulative since the file was made and never cleaned, so Prometheus counters only go up.
# totals: recorder health summed over all processes (events dropped on a full queue, events lost to failed writes).
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT,
    kind TEXT NOT NULL DEFAULT 'request',
    domain TEXT,
    session_name TEXT,
    provider TEXT,
    model TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL,
    ttfb_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    error_code TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_session ON events (domain, session_name, ts);
CREATE TABLE IF NOT EXISTS counters (
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    status INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_count INTEGER NOT NULL DEFAULT 0,
    latency_sum REAL NOT NULL DEFAULT 0,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in BUCKET_COLUMNS)},
    PRIMARY KEY (provider, model, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active_streams (
    pid INTEGER NOT NULL,
    stream_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    provider TEXT,
    model TEXT,
    PRIMARY KEY (pid, stream_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""


def connect(path: str, *, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """Open the database (creating it private), in WAL mode with the current schema; autocommit."""
    _create_private(path)
    try:
        # timeout= is SQLite's busy_timeout: wait that long for another process's lock before "database is locked".
        conn = sqlite3.connect(
            path,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=blocking.sqlite_factory(),
        )
    except sqlite3.Error as exc:
        raise AnalyticsError(f"The analytics database {path} cannot be opened: {exc}.") from None
    try:
        _setup(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise AnalyticsError(f"The analytics database {path} cannot be used: {exc}.") from None
    except BaseException:
        conn.close()
        raise
    return conn


def is_busy(exc: sqlite3.Error) -> bool:
    """Return whether an error means another connection holds the lock (worth retrying)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _create_private(path: str) -> None:
    # Never opening an existing file matters here: a descriptor of the database closed by this process drops the
    # recorder's POSIX locks, and other processes then read a WAL being reset under them ("disk I/O error").
    try:
        create_private(path)
    except OSError as exc:
        raise AnalyticsError(f"The analytics database {path} cannot be created: {exc.strerror}.") from None


def _setup(conn: sqlite3.Connection) -> None:
    deadline = time.monotonic() + SETUP_DEADLINE
    delay = 0.005
    while True:
        try:
            _setup_once(conn)
            return
        except sqlite3.Error as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _setup_once(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Without a limit the -wal file stays as large as the biggest burst (a cleanup) ever made it.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return  # the usual start: no write lock taken
    # One process at a time creates; the others find user_version set once they get the lock.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise AnalyticsError(
                f"The analytics database has schema version {version}, newer than this gateway's "
                f"{SCHEMA_VERSION}; upgrade the gateway or move the file away."
            )
        if version < SCHEMA_VERSION:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
