"""Where the dashboard and /analytics/* read from: this machine's SQLite file, or the fleet's Redis aggregates."""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

from . import db, queries


class Source(Protocol):
    """What the dashboard and /analytics/* read; used as a context manager around one page's queries."""

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def summary(self, window_seconds: float, *, now: float | None = None) -> list[dict[str, Any]]: ...

    def timeseries(self, window_seconds: float, buckets: int, *, now: float | None = None) -> list[dict]: ...

    def sessions(
        self, *, since: float | None = None, limit: int = 1000, now: float | None = None
    ) -> list[dict[str, Any]]: ...

    def active_streams(self) -> int: ...


class LocalSource:
    """The analytics SQLite file: every process of this machine (one connection per `with`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> LocalSource:
        self._conn = db.connect(self.path)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def summary(self, window_seconds: float, *, now: float | None = None) -> list[dict[str, Any]]:
        return queries.summary(self._source(), window_seconds, now=now)

    def timeseries(self, window_seconds: float, buckets: int, *, now: float | None = None) -> list[dict]:
        return queries.timeseries(self._source(), window_seconds, buckets, now=now)

    def sessions(
        self, *, since: float | None = None, limit: int = 1000, now: float | None = None
    ) -> list[dict[str, Any]]:
        return queries.sessions(self._source(), since=since, limit=limit, now=now)

    def active_streams(self) -> int:
        return queries.metrics_snapshot(self._source())["active_streams_total"]

    def _source(self) -> sqlite3.Connection | str:
        return self.path if self._conn is None else self._conn
