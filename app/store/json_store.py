"""Sessions in one JSON file, shared by Passenger's processes: locked, atomic, never silently emptied."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from .base import SCHEMA_VERSION, Session, SessionStore, StoreError, isoformat, limit_error, seen_since

log = logging.getLogger(__name__)

T = TypeVar("T")
TEMP_PREFIX = ".sessions-"
# Waiters poll the lock; filelock's default 50 ms would cap contended writes at ~20/s per waiter.
LOCK_POLL = 0.002
STALE_TEMP_SECONDS = 3600


class StoreCorrupt(StoreError):
    code = "store_corrupt"


class JsonSessionStore(SessionStore):
    """Every change: take the lock, re-read if another process wrote, write a temp file, fsync, os.replace."""

    def __init__(self, path: str, lock_timeout: float = 10.0) -> None:
        self.path = path
        self.directory = os.path.dirname(path) or "."
        try:
            # Made here, private, before the lock file would make it with default permissions.
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"The session store folder {self.directory} cannot be created: {exc.strerror}.") from None
        self.lock = FileLock(path + ".lock", timeout=lock_timeout, mode=0o600, poll_interval=LOCK_POLL)
        self.lock_timeout = lock_timeout
        self._cache_lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._data: dict[str, dict[str, dict[str, Any]]] = {}
        self._read()  # a corrupt file stops start-up here, and stays on disk as it is

    # -- reading --------------------------------------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Return {domain: {name: record}}, re-parsed only when the file changed (inode, mtime or size)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"The session store {self.path} cannot be read: {exc.strerror}.") from None
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if signature == self._signature:
            return self._data
        with self._cache_lock:
            if signature != self._signature:
                self._data = self._parse()
                self._signature = signature
            return self._data

    def _parse(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            with open(self.path, "rb") as f:
                document = json.loads(f.read())
            sessions = document["sessions"]
            if not isinstance(sessions, dict) or not all(isinstance(v, dict) for v in sessions.values()):
                raise ValueError("'sessions' is not an object of domains")
            return sessions
        except OSError as exc:
            raise StoreError(f"The session store {self.path} cannot be read: {exc.strerror}.") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupt(
                f"The session store {self.path} is not a valid sessions file ({exc}). It was left untouched for "
                "inspection: restore it from a backup, or move it away to start with an empty store."
            ) from None

    def get(self, domain: str, name: str) -> Session | None:
        record = self._read().get(domain, {}).get(name)
        return Session.from_record(domain, name, record) if record is not None else None

    def list(self, domain: str | None = None) -> list[Session]:
        data = self._read()
        domains = [domain] if domain else sorted(data)
        return [Session.from_record(d, n, r) for d in domains for n, r in sorted(data.get(d, {}).items())]

    # -- changing -------------------------------------------------------------------------------------------------

    def _change(self, change: Callable[[dict[str, dict[str, dict[str, Any]]]], tuple[bool, T]]) -> T:
        """Run change on a private copy under the lock; write the copy back when it says it changed something."""
        try:
            with self.lock:
                current = self._read()
                data = {domain: dict(names) for domain, names in current.items()}
                changed, result = change(data)
                if changed:
                    self._write({d: n for d, n in data.items() if n})
                return result
        except Timeout:
            raise StoreError(
                f"The session store is busy (lock not acquired within {self.lock_timeout:g} s); retry shortly.",
                code="store_busy",
                retry_after=1,
            ) from None

    def _write(self, sessions: dict[str, dict[str, dict[str, Any]]]) -> None:
        document = {"version": SCHEMA_VERSION, "sessions": sessions}
        payload = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=self.directory)  # mode 0600
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            _fsync_directory(self.directory)
        except OSError as exc:
            log.error("session store write failed: %s", exc)
            raise StoreError(f"The session store could not be saved ({exc.strerror}); nothing was changed.") from None
        finally:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)
        stat = os.stat(self.path)
        self._data, self._signature = sessions, (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def register(self, session: Session, *, now: datetime, limit: int, active_since: datetime) -> tuple[Session, bool]:
        stamp = isoformat(now)

        def change(data):
            names = data.setdefault(session.domain, {})
            existing = names.get(session.session_name)
            current = Session.from_record(session.domain, session.session_name, existing) if existing else None
            if not (current and current.seen_since(active_since)):
                since = isoformat(active_since)
                active = sum(1 for n, r in names.items() if n != session.session_name and r["last_seen_at"] >= since)
                if active >= limit:
                    raise limit_error(session.domain, limit, (now - active_since).total_seconds())
            session.created_at = current.created_at if current else stamp
            session.updated_at = session.last_seen_at = stamp
            names[session.session_name] = session.record()
            return True, (session, current is None)

        return self._change(change)

    def heartbeat(self, domain: str, name: str, *, now: datetime) -> Session | None:
        def change(data):
            record = data.get(domain, {}).get(name)
            if record is None:
                return False, None
            data[domain][name] = {**record, "last_seen_at": isoformat(now)}
            return True, Session.from_record(domain, name, data[domain][name])

        return self._change(change)

    def delete(self, domain: str, name: str) -> bool:
        def change(data):
            existed = data.get(domain, {}).pop(name, None) is not None
            return existed, existed

        return self._change(change)

    def cleanup(self, *, older_than: datetime, dry_run: bool = False) -> list[Session]:
        def change(data):
            stale = [
                Session.from_record(d, n, r)
                for d, names in sorted(data.items())
                for n, r in sorted(names.items())
                if not seen_since(r.get("last_seen_at"), older_than)
            ]
            if not dry_run:
                for session in stale:
                    del data[session.domain][session.session_name]
            return bool(stale) and not dry_run, stale

        removed = self._change(change)
        if not dry_run:
            self._remove_stale_temp_files()
        return removed

    def _remove_stale_temp_files(self) -> None:
        """Delete temp files a killed process left behind (they never replaced the store)."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        with suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(TEMP_PREFIX) and entry.stat().st_mtime < cutoff:
                    with suppress(OSError):
                        os.unlink(entry.path)

    def describe(self) -> dict[str, Any]:
        return {"backend": "json", "sessions": sum(len(n) for n in self._read().values())}


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable: without it a power cut can bring back the old file.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
