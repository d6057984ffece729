"""Sessions and the store interface every backend implements."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import SessionLimitReached

SCHEMA_VERSION = 1
# Fields a re-registration may leave as they are (a userscript sends only the ids it captured).
KEEPABLE = frozenset({"bridge_base_url", "bridge_api_key", "models", "pool"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """Return ISO 8601 UTC with a Z, to the millisecond."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seen_since(last_seen_at: str | None, moment: datetime) -> bool:
    """Return whether a stored timestamp is at or after moment."""
    # Stored stamps all come from isoformat(): fixed width, UTC, so text order is time order and
    # thousands of records compare without parsing a date each.
    return bool(last_seen_at) and last_seen_at >= isoformat(moment)


@dataclass
class Session:
    """A named LMArena conversation on one domain, and where to reach its bridge."""

    domain: str
    session_name: str
    session_id: str
    message_id: str
    bridge_base_url: str | None = None
    # The key its bridge wants; stored, never shown (repr, to_dict), so no log line or answer can carry it.
    bridge_api_key: str | None = field(default=None, repr=False)
    models: dict[str, str] = field(default_factory=dict)
    # The pool it serves in (X-Session-Pool, GATEWAY_KEY_ROUTES), or None; sessions stored before pools load as None.
    pool: str | None = None
    # What the ids were taken from: "retry" (a user's Retry click) or "bridge_job" (a request the bridge's tab sent);
    # None when the registration did not say, and for sessions stored before it was recorded.
    ids_source: str | None = None
    created_at: str = ""
    updated_at: str = ""
    last_seen_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the session as it may be shown: whether it has a bridge key, never the key."""
        data = asdict(self)
        data["bridge_api_key_set"] = bool(data.pop("bridge_api_key"))
        return data

    def record(self) -> dict[str, Any]:
        """Return what is stored under (domain, session_name)."""
        data = asdict(self)
        del data["domain"], data["session_name"]
        return data

    @classmethod
    def from_record(cls, domain: str, name: str, record: dict[str, Any]) -> Session:
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record and k not in ("domain", "session_name")}
        return cls(domain=domain, session_name=name, **known)

    def seen_since(self, moment: datetime) -> bool:
        return seen_since(self.last_seen_at, moment)


class SessionStore:
    """Sessions keyed by (domain, session_name); every change is atomic, so several processes can share it."""

    def get(self, domain: str, name: str) -> Session | None:
        """Return one session, or None."""
        raise NotImplementedError

    def find(self, domain: str, name: str) -> Session | None:
        """Return one session for routing a request, or None; its last_seen_at may lag the newest heartbeat."""
        return self.get(domain, name)

    def list(self, domain: str | None = None) -> list[Session]:
        """Return the sessions of one domain, or of all, ordered by domain then name."""
        raise NotImplementedError

    def pool(self, domain: str, pool: str) -> list[Session]:
        """Return the sessions of one pool on a domain, ordered by name."""
        return [s for s in self.list(domain) if s.pool == pool]

    def register(
        self, session: Session, *, now: datetime, limit: int, active_since: datetime, keep: frozenset[str] = frozenset()
    ) -> tuple[Session, bool]:
        """Create or update a session and mark it seen; return it and whether it is new.

        Fields named in keep (bridge_base_url, bridge_api_key, models, pool) keep their stored value when the session
        exists; a kept bridge_api_key only while bridge_base_url stays the same (see keep_stored).

        :raise SessionLimitReached: when it is not active yet and its domain already has `limit` active sessions.
        """
        raise NotImplementedError

    def heartbeat(self, domain: str, name: str, *, now: datetime) -> Session | None:
        """Mark a session seen now; return it, or None when there is no such session."""
        raise NotImplementedError

    def delete(self, domain: str, name: str) -> bool:
        """Remove a session; return whether it existed."""
        raise NotImplementedError

    def cleanup(self, *, older_than: datetime, dry_run: bool = False) -> list[Session]:
        """Remove (or with dry_run only list) sessions not seen since older_than."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Return what /health may show about the store."""
        return {}

    def close(self) -> None:
        """Release connections."""


def keep_stored(session: Session, existing: dict[str, Any] | None, keep: frozenset[str]) -> None:
    """Give session the stored values of the fields in keep; a bridge key is dropped when its bridge changes."""
    if not existing:
        return
    for name in keep & KEEPABLE:
        if name in existing:
            setattr(session, name, existing[name])
    # A key belongs to the bridge it was given for: it is never sent to another URL the session is moved to.
    if "bridge_api_key" in keep and existing.get("bridge_base_url") != session.bridge_base_url:
        session.bridge_api_key = None


def limit_error(domain: str, limit: int, window: float) -> SessionLimitReached:
    return SessionLimitReached(
        f"{domain} already has {limit} active sessions (GATEWAY_CONCURRENT_SESSIONS_LIMIT); a session stops counting "
        f"{window:g} s after its last heartbeat, or delete one with DELETE /session/{domain}/<session_name>.",
        retry_after=min(window, 300),
    )
