"""Sessions in one JSON file, shared by Passenger's processes: locked, atomic, never silently emptied.

Heartbeats go to a LastSeenTable beside the file instead (a rewrite per heartbeat capped them at ~40/s at 10,000
sessions); every read shows the newer of the two last_seen_at stamps.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from .base import Session, SessionStore, isoformat, keep_stored, limit_error, seen_since
from .last_seen import Key, LastSeenTable
from .locked_file import LockedJsonFile, Table

__all__ = ["JsonSessionStore"]


def _copy(table: Table) -> Table:
    # Records are never changed in place, so copying the two outer levels is enough for a private copy.
    return {domain: dict(names) for domain, names in table.items()}


def _pruned(table: Table) -> Table:
    return {domain: names for domain, names in table.items() if names}


def _merged(record: dict[str, Any], heartbeat: str | None) -> dict[str, Any]:
    # Stamps are fixed-width UTC text (base.isoformat), so the larger string is the later time.
    if heartbeat and heartbeat > record.get("last_seen_at", ""):
        return {**record, "last_seen_at": heartbeat}
    return record


def last_seen_path(path: str) -> str:
    """Return where the heartbeats of the sessions file at path are kept: beside it."""
    return os.path.splitext(path)[0] + "-heartbeats.sqlite3"


class JsonSessionStore(SessionStore):
    """Sessions as {domain: {name: record}} in a LockedJsonFile."""

    def __init__(self, path: str, lock_timeout: float = 10.0) -> None:
        self.file = LockedJsonFile(path, "sessions", lock_timeout=lock_timeout)
        self.path = path
        self.seen = LastSeenTable(last_seen_path(path), busy_timeout=lock_timeout)

    def get(self, domain: str, name: str) -> Session | None:
        record = self.file.read().get(domain, {}).get(name)
        if record is None:
            return None
        return Session.from_record(domain, name, _merged(record, self.seen.get(domain, name)))

    def find(self, domain: str, name: str) -> Session | None:
        # perf: routing needs the bridge and ids, not the newest heartbeat; skipping the heartbeat table keeps a
        # session request to the cached file read (bench/README.md, session lookups: 115k/s without, 91k/s with).
        record = self.file.read().get(domain, {}).get(name)
        return None if record is None else Session.from_record(domain, name, record)

    def list(self, domain: str | None = None) -> list[Session]:
        data = self.file.read()
        seen = self.seen.all(domain)
        domains = [domain] if domain else sorted(data)
        return [
            Session.from_record(d, n, _merged(r, seen.get((d, n))))
            for d in domains
            for n, r in sorted(data.get(d, {}).items())
        ]

    def pool(self, domain: str, pool: str) -> list[Session]:
        # perf: a pool's members, not the whole domain: the cached file is filtered first and only the members'
        # heartbeats are read (bench/README.md, pool member choice: listing 2,500 sessions cost 15-18 ms).
        names = self.file.read().get(domain, {})
        return [
            Session.from_record(domain, n, _merged(r, self.seen.get(domain, n)))
            for n, r in sorted(names.items())
            if r.get("pool") == pool
        ]

    def register(
        self, session: Session, *, now: datetime, limit: int, active_since: datetime, keep: frozenset[str] = frozenset()
    ) -> tuple[Session, bool]:
        stamp = isoformat(now)

        def change(current: Table):
            data = _copy(current)
            names = data.setdefault(session.domain, {})
            existing = names.get(session.session_name)
            seen = self.seen.all(session.domain)
            last_seen = {n: _merged(r, seen.get((session.domain, n)))["last_seen_at"] for n, r in names.items()}
            if not (existing and seen_since(last_seen[session.session_name], active_since)):
                since = isoformat(active_since)
                active = sum(1 for n, at in last_seen.items() if n != session.session_name and at >= since)
                if active >= limit:
                    raise limit_error(session.domain, limit, (now - active_since).total_seconds())
            keep_stored(session, existing, keep)
            session.created_at = existing["created_at"] if existing else stamp
            session.updated_at = session.last_seen_at = stamp
            names[session.session_name] = session.record()
            return data, (session, existing is None)

        return self.file.change(change)

    def heartbeat(self, domain: str, name: str, *, now: datetime) -> Session | None:
        # Under the table's write lock, which delete and cleanup hold until their file is replaced: a heartbeat
        # either lands before a removal (and cleanup sees it) or finds the session gone.
        with self.seen.writing() as conn:
            record = self.file.read().get(domain, {}).get(name)
            if record is None:
                return None
            stamp = isoformat(now)
            self.seen.put(conn, domain, name, stamp)
            return Session.from_record(domain, name, _merged(record, self.seen.get(domain, name, conn)))

    def delete(self, domain: str, name: str) -> bool:
        def change(current: Table):
            if name not in current.get(domain, {}):
                return None, False
            data = _copy(current)
            del data[domain][name]
            return _pruned(data), True

        with self.seen.writing() as conn:
            existed = self.file.change(change)
            self.seen.remove(conn, [(domain, name)])
        return existed

    def cleanup(self, *, older_than: datetime, dry_run: bool = False) -> list[Session]:
        gone: list[Key] = []

        def change(current: Table):
            seen = self.seen.all()
            stale = [
                session
                for d, names in sorted(current.items())
                for n, r in sorted(names.items())
                if not (session := Session.from_record(d, n, _merged(r, seen.get((d, n))))).seen_since(older_than)
            ]
            # Heartbeats of sessions no longer in the file (left by a crash between the two writes) go too.
            gone.extend(k for k in seen if k[1] not in current.get(k[0], {}))
            gone.extend((s.domain, s.session_name) for s in stale)
            if dry_run or not stale:
                return None, stale
            data = _copy(current)
            for session in stale:
                del data[session.domain][session.session_name]
            return _pruned(data), stale

        with self.seen.writing() as conn:
            removed = self.file.change(change)
            if not dry_run:
                self.seen.remove(conn, gone)
        if not dry_run:
            self.file.remove_stale_temp_files()
        return removed

    def describe(self) -> dict[str, Any]:
        return {"backend": "json", "sessions": sum(len(n) for n in self.file.read().values())}

    def close(self) -> None:
        self.seen.close()
