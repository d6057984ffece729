"""Small records every gateway process must agree on (circuit breakers, token state), in the storage folder or Redis."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..config import storage_file
from ..errors import StoreCorrupt, StoreError
from . import redis_client
from .locked_file import LockedJsonFile

log = logging.getLogger(__name__)

Record = dict[str, Any]
Change = Callable[[Record], Record | None]


class FileState:
    """Records in one JSON file beside the sessions; reads are cached, changes locked and atomic."""

    # perf: a stat of the file on each of a request's two breaker reads was 3-9% of its samples (bench/ profiles).
    CACHE_SECONDS = 0.5  # as RedisState: another process's change shows within half a second

    def __init__(
        self, path: str, lock_timeout: float = 10.0, *, kind: str = "providers", durable: bool = False
    ) -> None:
        # Breaker state is cheap to lose on a power cut, so no fsync by default: changes stay quick under failure
        # storms. Token state (revocations) must survive one: it asks for durable.
        self.file = LockedJsonFile(path, kind, lock_timeout=lock_timeout, durable=durable)
        self._table: Record = {}
        self._fresh_until = 0.0

    def get(self, name: str) -> Record:
        return self._read().get(name, {})

    def names(self) -> list[str]:
        """Return the name of every record."""
        return list(self._read())

    def _read(self) -> Record:
        # Every routed request reads this twice; checking the file each time (an os.stat) was 3-9% of a request.
        now = time.monotonic()
        if now >= self._fresh_until:
            self._table = self.file.read()
            self._fresh_until = now + self.CACHE_SECONDS
        return self._table

    def update(self, name: str, change: Change) -> tuple[Record, bool]:
        """Apply change to the record under the lock; return the record and whether it changed."""

        def apply(table):
            new = change(table.get(name, {}))
            return (None, (table.get(name, {}), False)) if new is None else ({**table, name: new}, (new, True))

        try:
            return self.file.change(apply)
        finally:
            self._fresh_until = 0.0  # this process sees its own change at once

    def remove(self, names: list[str], still: Callable[[Record], bool]) -> list[str]:
        """Remove the records of names for which still(record) holds under the lock; return those removed."""

        def apply(table):
            gone = [name for name in names if name in table and still(table[name])]
            kept = {name: record for name, record in table.items() if name not in gone}
            return (kept if gone else None), gone

        try:
            return self.file.change(apply)
        finally:
            self._fresh_until = 0.0


class RedisState:
    """Records as JSON strings in Redis; changes are optimistic transactions (WATCH/MULTI), retried on conflict."""

    CACHE_SECONDS = 0.5
    ATTEMPTS = 20

    def __init__(self, url: str, prefix: str = "lmgw:", timeout: float = 5.0, *, kind: str = "provider") -> None:
        import redis

        self._redis = redis
        self.client = redis_client.connect(url, timeout)
        self.prefix = prefix
        self.kind = kind
        self._cache: dict[str, tuple[float, Record]] = {}

    def get(self, name: str) -> Record:
        cached = self._cache.get(name)
        if cached and time.monotonic() < cached[0]:
            return cached[1]
        try:
            raw = self.client.get(self.prefix + self.kind + ":" + name)
        except (self._redis.exceptions.RedisError, OSError):
            return cached[1] if cached else {}  # the breaker must not take the gateway down with Redis
        record = json.loads(raw) if raw else {}
        self._cache[name] = (time.monotonic() + self.CACHE_SECONDS, record)
        return record

    def names(self) -> list[str]:
        """Return the name of every record (a SCAN: for status pages, not the request path)."""
        start = self.prefix + self.kind + ":"
        try:
            keys = self.client.scan_iter(match=_glob_escape(start) + "*", count=500)
            return [(key.decode() if isinstance(key, bytes) else key)[len(start) :] for key in keys]
        except (self._redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis is unavailable for {self.kind} state ({type(exc).__name__}).") from None

    def update(self, name: str, change: Change) -> tuple[Record, bool]:
        key = self.prefix + self.kind + ":" + name
        try:
            with self.client.pipeline() as pipe:
                for _ in range(self.ATTEMPTS):
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        current = json.loads(raw) if raw else {}
                        new = change(current)
                        if new is None:
                            pipe.unwatch()
                            return current, False
                        pipe.multi()
                        pipe.set(key, json.dumps(new))
                        pipe.execute()
                        self._cache[name] = (time.monotonic() + self.CACHE_SECONDS, new)
                        return new, True
                    except self._redis.WatchError:
                        continue
        except (self._redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis is unavailable for {self.kind} state ({type(exc).__name__}).") from None
        raise StoreError(f"The {self.kind} state kept changing under concurrent updates; try again.", code="store_busy")

    def remove(self, names: list[str], still: Callable[[Record], bool]) -> list[str]:
        """Remove the records of names for which still(record) holds, each in a transaction; return those removed."""
        gone = []
        try:
            with self.client.pipeline() as pipe:
                for name in names:
                    key = self.prefix + self.kind + ":" + name
                    for _ in range(self.ATTEMPTS):
                        try:
                            pipe.watch(key)
                            raw = pipe.get(key)
                            if not raw or not still(json.loads(raw)):
                                pipe.unwatch()
                                break
                            pipe.multi()
                            pipe.delete(key)
                            pipe.execute()
                            gone.append(name)
                            break
                        except self._redis.WatchError:
                            continue  # changed meanwhile: look at it again
        except (self._redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis is unavailable for provider state ({type(exc).__name__}).") from None
        for name in gone:
            self._cache.pop(name, None)
        return gone


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def open_breaker_state(config) -> FileState | RedisState:
    """Return where circuit state lives: Redis with the Redis session store, else a file beside the sessions."""
    timeout = config["GATEWAY_STORE_LOCK_TIMEOUT"]
    if config["SESSION_STORE"] == "redis":
        return RedisState(config["REDIS_URL"], timeout=timeout)
    path = storage_file(config, "providers.json")
    try:
        return FileState(path, timeout)
    except StoreCorrupt:
        # Circuit state is only a cache of recent failures: set a bad file aside and start afresh.
        aside = f"{path}.corrupt-{int(time.time())}"
        os.replace(path, aside)
        log.warning("provider state file was corrupt; moved to %s", aside)
        return FileState(path, timeout)
