"""Requests of one client key in flight at once on /v1, counted in expiring leases every process shares.

Each request holds a lease, a row in SQLite in the storage folder (or a member of a Redis sorted set), from
its check until its answer is sent; a stream holds it until it ends or its client leaves. A lease expires unless the
process that took it renews it, so a killed process or a recycled Passenger worker frees its keys' slots within
LEASE_SECONDS, and one that lost track of a lease (its response dropped unsent) stops renewing it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator

from flask import Flask, Response, after_this_request, current_app, request

from . import request_record
from .config import ConfigError, storage_file
from .errors import TooManyInFlight
from .ratelimit import identity
from .store.inflight_leases import RedisSlots, SQLiteSlots

log = logging.getLogger(__name__)

# A file of its own, not the rate limit's: each can be broken, or deleted, without the other.
FILE_NAME = "inflight.sqlite3"
LEASE_SECONDS = 30.0  # how long a lease counts without being renewed: a dead process's slots come back after this
RENEWALS = 3  # renewals per lease lifetime: two may fail (a busy file, a Redis blip) before a live lease lapses
WARN_EVERY = 60.0  # seconds between log lines while the shared state cannot be used


class Lease:
    """One request's slot; renewed while anything still holds this object, given back by release()."""

    __slots__ = ("__weakref__", "id", "key", "limiter", "released")

    def __init__(self, limiter: InFlight, key: str) -> None:
        self.limiter, self.key, self.id = limiter, key, uuid.uuid4().hex
        self.released = False

    def release(self) -> None:
        """Give the slot back; a second call does nothing."""
        if not self.released:
            self.released = True
            self.limiter.release(self)


class InFlight:
    """At most `limit` leases per key across every process sharing `slots`; this process's renewed by one thread."""

    def __init__(self, limit: int, slots: SQLiteSlots | RedisSlots, lease_seconds: float = LEASE_SECONDS) -> None:
        self.limit, self.slots, self.lease_seconds = limit, slots, lease_seconds
        # Leases this process holds. Weak: a lease whose request dropped it unreleased stops being renewed.
        self._held: weakref.WeakSet[Lease] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_pid = 0
        self._stop = threading.Event()
        self._warned = 0.0

    def acquire(self, key: str) -> Lease | None:
        """Return a lease on one of key's slots, or None when all are taken."""
        lease = Lease(self, key)
        now = time.time()
        try:
            taken = self.slots.take(key, lease.id, self.limit, now, now + self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - a broken store must not take /v1 down with it
            self._warn("in-flight state unavailable, letting requests through: %s", exc)
            lease.released = True  # nothing to give back
            return lease
        if not taken:
            return None
        with self._lock:
            self._held.add(lease)
            self._start_renewer()
        return lease

    def release(self, lease: Lease) -> None:
        """Give lease's slot back at once (else it lapses when no longer renewed)."""
        with self._lock:
            self._held.discard(lease)
        try:
            self.slots.give_back(lease.key, lease.id)
        except Exception as exc:  # noqa: BLE001 - the lease lapses on its own
            self._warn("in-flight lease not given back (it lapses by itself): %s", exc)

    def renew(self) -> None:
        """Move every lease this process holds LEASE_SECONDS on from now."""
        with self._lock:
            held = [(lease.key, lease.id) for lease in self._held]
        if not held:
            return  # an idle process writes nothing; take() drops a key's expired leases itself
        now = time.time()
        try:
            self.slots.renew(held, now, now + self.lease_seconds)
        except Exception as exc:  # noqa: BLE001 - the next renewal tries again
            self._warn("in-flight leases not renewed: %s", exc)

    def close(self) -> None:
        """Stop renewing and close the shared state."""
        self._stop.set()
        if self._renewer is not None and self._renewer_pid == os.getpid():
            self._renewer.join(timeout=5)
        self.slots.close()

    def _start_renewer(self) -> None:
        # Threads do not survive fork (Passenger's spawner forks after loading the app): one per process, started
        # with the process's first lease.
        if self._renewer_pid == os.getpid():
            return
        self._renewer_pid = os.getpid()
        self._renewer = threading.Thread(target=self._renew_until_closed, name="inflight-renewer", daemon=True)
        self._renewer.start()

    def _renew_until_closed(self) -> None:
        while not self._stop.wait(self.lease_seconds / RENEWALS):
            self.renew()

    def _warn(self, message: str, exc: Exception) -> None:
        if time.monotonic() - self._warned > WARN_EVERY:
            self._warned = time.monotonic()
            log.warning(message, type(exc).__name__)


def init_app(app: Flask) -> None:
    """Set up the shared in-flight count when GATEWAY_MAX_IN_FLIGHT_PER_KEY is above zero."""
    config = app.config
    app.extensions["inflight"] = None
    if not config["GATEWAY_MAX_IN_FLIGHT_PER_KEY"]:
        return
    if config["SESSION_STORE"] == "redis":
        slots = RedisSlots(config["REDIS_URL"], timeout=config["GATEWAY_STORE_LOCK_TIMEOUT"])
    else:
        path = storage_file(config, FILE_NAME)
        try:
            slots = SQLiteSlots(path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"GATEWAY_MAX_IN_FLIGHT_PER_KEY: the file {path} cannot be used: {exc}.") from None
    app.extensions["inflight"] = InFlight(config["GATEWAY_MAX_IN_FLIGHT_PER_KEY"], slots)


def limit_in_flight() -> None:
    """Hold one of the client key's slots until the answer is sent; refuse with 429 when none is free."""
    limiter: InFlight | None = current_app.extensions.get("inflight")
    if limiter is None or request.method == "OPTIONS":
        return
    key = identity()
    lease = limiter.acquire(key)
    if lease is None:
        whose = "this API key" if key.startswith("key:") else "this client address"
        raise TooManyInFlight(
            f"Too many requests in flight: at most {limiter.limit} at once for {whose} "
            "(GATEWAY_MAX_IN_FLIGHT_PER_KEY). Retry when one of them has finished.",
            retry_after=1,
        )
    record = request_record.current()
    record.in_flight = lease

    @after_this_request
    def hand_to_stream(response: Response) -> Response:
        if response.is_streamed and record.in_flight is lease:
            # The view has returned but the stream goes on: the slot is the response's until it ends or is closed.
            record.in_flight = None
            response.response = _held_until_done(response.response, lease)
            response.call_on_close(lease.release)  # a response closed before its first chunk
        return response


def _held_until_done(chunks: Iterable[bytes], lease: Lease) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        lease.release()


def release_unless_streaming(_exc: BaseException | None = None) -> None:
    """Give back the request's slot when its answer is built; a stream has taken its slot along (hand_to_stream)."""
    record = request_record.current()
    if record.in_flight is not None:
        record.in_flight.release()
        record.in_flight = None
