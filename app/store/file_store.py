"""Sessions in one JSON file, shared by Passenger's processes: locked, atomic, never silently emptied."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .base import Session, SessionStore, isoformat, keep_stored, limit_error, seen_since
from .locked_file import LockedJsonFile, Table

__all__ = ["JsonSessionStore"]


def _copy(table: Table) -> Table:
    # Records are never changed in place, so copying the two outer levels is enough for a private copy.
    return {domain: dict(names) for domain, names in table.items()}


def _pruned(table: Table) -> Table:
    return {domain: names for domain, names in table.items() if names}


class JsonSessionStore(SessionStore):
    """Sessions as {domain: {name: record}} in a LockedJsonFile."""

    def __init__(self, path: str, lock_timeout: float = 10.0) -> None:
        self.file = LockedJsonFile(path, "sessions", lock_timeout=lock_timeout)
        self.path = path

    def get(self, domain: str, name: str) -> Session | None:
        record = self.file.read().get(domain, {}).get(name)
        return Session.from_record(domain, name, record) if record is not None else None

    def list(self, domain: str | None = None) -> list[Session]:
        data = self.file.read()
        domains = [domain] if domain else sorted(data)
        return [Session.from_record(d, n, r) for d in domains for n, r in sorted(data.get(d, {}).items())]

    def register(
        self, session: Session, *, now: datetime, limit: int, active_since: datetime, keep: frozenset[str] = frozenset()
    ) -> tuple[Session, bool]:
        stamp = isoformat(now)

        def change(current: Table):
            data = _copy(current)
            names = data.setdefault(session.domain, {})
            existing = names.get(session.session_name)
            if not (existing and seen_since(existing.get("last_seen_at"), active_since)):
                since = isoformat(active_since)
                active = sum(1 for n, r in names.items() if n != session.session_name and r["last_seen_at"] >= since)
                if active >= limit:
                    raise limit_error(session.domain, limit, (now - active_since).total_seconds())
            keep_stored(session, existing, keep)
            session.created_at = existing["created_at"] if existing else stamp
            session.updated_at = session.last_seen_at = stamp
            names[session.session_name] = session.record()
            return data, (session, existing is None)

        return self.file.change(change)

    def heartbeat(self, domain: str, name: str, *, now: datetime) -> Session | None:
        def change(current: Table):
            record = current.get(domain, {}).get(name)
            if record is None:
                return None, None
            data = _copy(current)
            data[domain][name] = {**record, "last_seen_at": isoformat(now)}
            return data, Session.from_record(domain, name, data[domain][name])

        return self.file.change(change)

    def delete(self, domain: str, name: str) -> bool:
        def change(current: Table):
            if name not in current.get(domain, {}):
                return None, False
            data = _copy(current)
            del data[domain][name]
            return _pruned(data), True

        return self.file.change(change)

    def cleanup(self, *, older_than: datetime, dry_run: bool = False) -> list[Session]:
        def change(current: Table):
            stale = [
                Session.from_record(d, n, r)
                for d, names in sorted(current.items())
                for n, r in sorted(names.items())
                if not seen_since(r.get("last_seen_at"), older_than)
            ]
            if dry_run or not stale:
                return None, stale
            data = _copy(current)
            for session in stale:
                del data[session.domain][session.session_name]
            return _pruned(data), stale

        removed = self.file.change(change)
        if not dry_run:
            self.file.remove_stale_temp_files()
        return removed

    def describe(self) -> dict[str, Any]:
        return {"backend": "json", "sessions": sum(len(n) for n in self.file.read().values())}
