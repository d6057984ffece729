"""Keep blocking calls (SQLite's lock waits, fsync) off gevent's hub, so the other streams of a process go on.

Under gunicorn's gevent workers every request of a process is a greenlet on one thread: a call that blocks in C
(SQLite waiting for another process's write lock, an fsync) stops them all. There these calls run in gevent's
thread pool and only the greenlet that made them waits; under threads (waitress, gthread, Passenger) they run
where they are called, as before. gevent is never imported here: only a process it has patched uses it.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def under_gevent() -> bool:
    """Return whether gevent has patched this process's threads (gunicorn's gevent worker does before the app)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def call(function: Callable[..., T], *args: Any) -> T:
    """Return function(*args), run in gevent's thread pool under gevent (the caller's greenlet waits for it)."""
    if not under_gevent():
        return function(*args)
    from gevent import get_hub

    return get_hub().threadpool.apply(function, args)


class OffHubConnection(sqlite3.Connection):
    """A SQLite connection whose statements and commits run off the hub (a lock wait blocks only its caller).

    Rows already fetched by a statement's first step come back with it; later fetches run where they are called.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["check_same_thread"] = False  # its statements run in the pool's threads, one at a time
        super().__init__(*args, **kwargs)

    def execute(self, *args: Any) -> sqlite3.Cursor:
        return call(super().execute, *args)

    def executemany(self, *args: Any) -> sqlite3.Cursor:
        return call(super().executemany, *args)

    def executescript(self, *args: Any) -> sqlite3.Cursor:
        return call(super().executescript, *args)

    def commit(self) -> None:
        call(super().commit)


def sqlite_factory() -> type[sqlite3.Connection]:
    """Return the connection class for sqlite3.connect(factory=...): off the hub under gevent, plain otherwise."""
    return OffHubConnection if under_gevent() else sqlite3.Connection
