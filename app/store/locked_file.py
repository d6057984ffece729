"""A JSON document on disk shared by several processes: locked changes, atomic replace, cached reads."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from .. import blocking
from ..errors import StoreCorrupt, StoreError
from .base import SCHEMA_VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")
Table = dict[str, dict[str, Any]]
# Waiters poll the lock; filelock's default 50 ms would cap contended writes at ~20/s per waiter.
LOCK_POLL = 0.002
STALE_TEMP_SECONDS = 3600


class LockedJsonFile:
    """`{"version": 1, "<key>": {name: {...}}}` in one file; changes take the lock and replace the file whole."""

    def __init__(self, path: str, key: str, *, lock_timeout: float = 10.0, durable: bool = True) -> None:
        self.path, self.key, self.durable = path, key, durable
        self.directory = os.path.dirname(path) or "."
        self.temp_prefix = f".{os.path.basename(path)}-"
        try:
            # Made here, private, before the lock file would make it with default permissions.
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"The folder {self.directory} cannot be created: {exc.strerror}.") from None
        self.lock = FileLock(path + ".lock", timeout=lock_timeout, mode=0o600, poll_interval=LOCK_POLL)
        self.lock_timeout = lock_timeout
        self._cache_lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._data: Table = {}
        self.read()  # a corrupt file fails here, at start-up, and stays on disk as it is

    def read(self) -> Table:
        """Return the table, re-parsed only when the file changed (inode, mtime or size). Do not mutate it."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{self.path} cannot be read: {exc.strerror}.") from None
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return self._data
        with self._cache_lock:
            if signature != self._signature:
                self._data = self._parse()
                self._signature = signature
            return self._data

    def _parse(self) -> Table:
        try:
            with open(self.path, "rb") as f:
                table = json.loads(f.read())[self.key]
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise ValueError(f"'{self.key}' is not an object of objects")
            return table
        except OSError as exc:
            raise StoreError(f"{self.path} cannot be read: {exc.strerror}.") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupt(
                f"{self.path} is not a valid {self.key} file ({exc}). It was left untouched for inspection: "
                "restore it from a backup, or move it away to start empty."
            ) from None

    def change(self, change: Callable[[Table], tuple[Table | None, T]]) -> T:
        """Call change(current) under the lock; when it returns a new table, write that table."""
        try:
            with self.lock:
                table, result = change(self.read())
                if table is not None:
                    self._write(table)
                return result
        except Timeout:
            raise StoreError(
                f"{self.path} is busy (lock not acquired within {self.lock_timeout:g} s); retry shortly.",
                code="store_busy",
                retry_after=1,
            ) from None

    def _write(self, table: Table) -> None:
        payload = json.dumps({"version": SCHEMA_VERSION, self.key: table}, ensure_ascii=False, separators=(",", ":"))
        try:
            # The disk's part (write, fsync, rename) off gevent's hub; encoding holds the GIL wherever it runs.
            blocking.call(self._replace, payload.encode())
        except OSError as exc:
            log.error("writing %s failed: %s", self.path, exc)
            raise StoreError(f"{self.path} could not be saved ({exc.strerror}); nothing was changed.") from None
        stat = os.stat(self.path)
        with self._cache_lock:
            self._data, self._signature = table, (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _replace(self, payload: bytes) -> None:
        """Write payload to a temporary file and put it in place of the file (fsynced when durable)."""
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.temp_prefix, suffix=".tmp", dir=self.directory)  # mode 0600
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            if self.durable:
                _fsync_directory(self.directory)
        finally:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed process left behind (they never replaced the file)."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        with suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(self.temp_prefix) and entry.stat().st_mtime < cutoff:
                    with suppress(OSError):
                        os.unlink(entry.path)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable: without it a power cut can bring back the old file.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
