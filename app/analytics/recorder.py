"""Record analytics events from request threads in about a µs; one thread per process writes them in batches."""

from __future__ import annotations

import atexit
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from . import db, writer
from .fleet import FleetAnalytics

log = logging.getLogger(__name__)

MAX_STREAMS = 10_000  # per process; only a caller that never calls stream_ended() could get near it
FORK_WAIT = 10.0
LOG_EVERY = 60.0

# Guards starting a writer; remade in a forked child, where a copy could be held by a thread that does not exist.
_guard = threading.Lock()
_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
# Connections copied into a child by a fork that skipped the at-fork hooks: closing one there could delete the
# parent's WAL, so they are kept, unused, for the life of the child.
_inherited: list[sqlite3.Connection] = []


class Recorder:
    """Queue events in memory and write them to SQLite from one daemon thread per process (and to a fleet's Redis)."""

    def __init__(
        self,
        path: str,
        *,
        flush_interval: float = 0.5,
        max_batch: int = 200,
        max_queue: int = 10_000,
        busy_timeout: float = db.BUSY_TIMEOUT,
        retries: int = 4,
        fleet: FleetAnalytics | None = None,
    ) -> None:
        if flush_interval <= 0 or max_batch < 1 or max_queue < 1 or busy_timeout < 0 or retries < 0:
            raise ValueError("flush_interval and busy_timeout must be positive, max_batch and max_queue at least 1")
        self.path, self.flush_interval, self.max_batch, self.max_queue = path, flush_interval, max_batch, max_queue
        self.busy_timeout, self.retries = busy_timeout, retries
        # With several instances, the same events also go to Redis for every dashboard; this file still feeds
        # /metrics (each instance's own) and keeps the events themselves.
        self.fleet = fleet
        db.connect(path, busy_timeout=busy_timeout).close()  # a bad path fails at start-up, not on a request
        self._closed = False
        self._pid = 0  # no process owns a writer yet: the first record() in each process starts one
        self._conn: sqlite3.Connection | None = None
        self._reset()
        _recorders.add(self)

    def record(self, event: Mapping[str, Any]) -> None:
        """Queue one event (keys in writer.EVENT_COLUMNS); never blocks or raises. Do not change it afterwards."""
        if self._pid != os.getpid() and not self._adopt():
            return
        queue = self._queue
        if len(queue) >= self.max_queue:
            with self._stats_lock:  # rare path: the writer is behind
                self.dropped += 1
            return
        queue.append((time.time(), event))
        if len(queue) >= self.max_batch and not self._wake.is_set():
            self._wake.set()

    def stream_started(self, stream_id: str, provider: str | None, model: str | None) -> None:
        """Count a stream as open in this process until stream_ended(stream_id); visible after the next write."""
        if self._pid != os.getpid() and not self._adopt():
            return
        with self._streams_lock:
            if len(self._streams) < MAX_STREAMS:
                self._streams[stream_id] = (time.time(), provider, model)
                self._streams_version += 1

    def stream_ended(self, stream_id: str) -> None:
        """Stop counting a stream as open."""
        if self._pid != os.getpid() and not self._adopt():
            return
        with self._streams_lock:
            if self._streams.pop(stream_id, None) is not None:
                self._streams_version += 1

    def flush(self) -> None:
        """Write everything this process queued so far; return once it is committed or counted as failed."""
        if self._pid != os.getpid():
            return  # nothing queued here yet (or closed)
        with self._write_lock:
            self._drain()

    def close(self) -> None:
        """Write what is queued, forget this process's open streams and stop the writer."""
        with _guard:
            owned, self._closed, self._pid = self._pid == os.getpid(), True, -1
        _recorders.discard(self)
        if not owned:
            return
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=FORK_WAIT)
        with self._write_lock:
            with self._streams_lock:
                self._streams.clear()
                self._streams_version += 1
            self._drain()
            self._disconnect()
            if self.fleet is not None:
                self.fleet.close()

    def stats(self) -> dict[str, int]:
        """Return this process's counts: queued, written, dropped (queue full), failed (write gave up), retries."""
        return {
            "queued": len(self._queue),
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
            "invalid": self.invalid,
            "retries": self.retried,
        }

    def _reset(self) -> None:
        """Give this process its own queue, locks, streams and counts (a fork copies the parent's)."""
        if self._conn is not None:
            _inherited.append(self._conn)
            self._conn = None
        self._queue: deque[tuple[float, Mapping[str, Any]]] = deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._streams_lock = threading.Lock()
        self._streams: dict[str, tuple[float, str | None, str | None]] = {}
        # Version 1 against 0 written: the first write clears rows a dead process with this pid left behind.
        self._streams_version, self._streams_written = 1, 0
        self.written = self.dropped = self.failed = self.invalid = self.retried = 0
        self._saved = {"dropped": 0, "failed": 0}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._fork_held = False
        self._last_log = 0.0
        if self.fleet is not None:
            self.fleet.reset()

    def _adopt(self) -> bool:
        """Start this process's writer on its first use here; return False once closed."""
        with _guard:
            if self._closed:
                return False
            if self._pid != os.getpid():
                self._reset()
                thread = threading.Thread(target=self._run, name="analytics-writer", daemon=True)
                try:
                    thread.start()
                    self._thread = thread
                except RuntimeError as exc:  # no threads left, or shutting down: flush() still writes
                    log.warning("analytics writer not started: %s", exc)
                self._pid = os.getpid()  # last: other threads use the new queue only once it is complete
        return True

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the thread must outlive any surprise; the next round tries again
                log.exception("analytics writer round failed")

    def _drain(self) -> None:
        queue = self._queue
        todo = len(queue)  # only what is queued now, so a busy process cannot keep flush() looping
        while True:
            take = min(todo, self.max_batch)
            todo -= take
            batch = [queue.popleft() for _ in range(take)]
            with self._streams_lock:
                version = self._streams_version
                streams = dict(self._streams) if version != self._streams_written else None
            totals = {name: getattr(self, name) - saved for name, saved in self._saved.items()}
            totals = {name: delta for name, delta in totals.items() if delta}
            fleet_due = self.fleet is not None and (streams is not None or self.fleet.due())
            if not batch and streams is None and not totals and not fleet_due:
                return
            written = self._write(batch, streams, totals) if batch or streams is not None or totals else True
            if self.fleet is not None:
                if streams is not None:
                    self.fleet.streams_open(len(streams))
                self.fleet.push()  # kept for the next round while Redis is down, whatever SQLite did
            if not written:
                return  # the next round tries again rather than spend the retry budget on every batch now
            if streams is not None:
                self._streams_written = version
            for name, delta in totals.items():
                self._saved[name] += delta
            if not todo:
                return

    def _write(self, batch: list, streams: dict | None, totals: dict[str, int]) -> bool:
        rows, counters, invalid = writer.build(batch)
        self.invalid += invalid
        if self.fleet is not None:
            self.fleet.add(rows)
        for attempt in range(self.retries + 1):
            try:
                if self._conn is None:
                    self._conn = db.connect(self.path, busy_timeout=self.busy_timeout)
                writer.write_batch(self._conn, rows, counters, pid=os.getpid(), streams=streams, totals=totals)
            except Exception as exc:  # whatever it is, it must not reach a request or kill the thread
                busy = isinstance(exc, sqlite3.Error) and db.is_busy(exc)
                if busy and attempt < self.retries:
                    self.retried += 1
                    # Jittered so processes that waited on the same lock do not collide again.
                    time.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.5))
                    continue
                if not busy:
                    self._disconnect()
                self.failed += len(rows)
                self._log_failure(exc, len(rows))
                return False
            self.written += len(rows)
            return True
        return False  # not reached: the last attempt returns above

    def _disconnect(self) -> None:
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _log_failure(self, exc: Exception, count: int) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY or not self._last_log:
            self._last_log = now
            # Error class and SQLite's message only: events are never logged.
            message = "analytics: %d events not written to %s (%s: %s); %d lost in this process so far"
            log.warning(message, count, self.path, type(exc).__name__, exc, self.failed)

    def _before_fork(self) -> None:
        if self._pid == os.getpid():
            self._fork_held = self._write_lock.acquire(timeout=FORK_WAIT)
            if self._fork_held:
                self._disconnect()  # no connection may cross a fork; the parent reopens on its next write

    def _after_fork_in_parent(self) -> None:
        if self._fork_held:
            self._fork_held = False
            self._write_lock.release()


def _before_fork() -> None:
    for recorder in list(_recorders):
        recorder._before_fork()


def _after_fork_in_parent() -> None:
    for recorder in list(_recorders):
        recorder._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()  # each recorder resets itself on its first use in the child (the pid check)


def _flush_all() -> None:
    for recorder in list(_recorders):
        try:
            recorder.flush()
        except Exception:
            log.exception("analytics flush at exit failed")


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
atexit.register(_flush_all)
