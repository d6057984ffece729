"""Registration tokens: what a userscript carries instead of the admin key, good for one session name and domains.

A token may also bind the session to a bridge URL and pool; the bridge's key never goes in it, only a reference to
the key kept in the token state (`store.breaker_state` records of kind "tokens", shared like breakers). Tokens expire
after GATEWAY_USERSCRIPT_TOKEN_DAYS, and the admin can revoke every token of one session issued until now.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from flask import Flask, current_app

from . import signing_secrets
from .config import storage_file
from .store.breaker_state import FileState, RedisState

PREFIX = "v1"
SECRET_FILE = "userscript.secret"
DAY = 86400


@dataclass(frozen=True)
class Scope:
    """What a genuine token covers and what a registration with it sets."""

    session_name: str
    domains: frozenset[str]
    bridge_base_url: str | None = None
    pool: str | None = None
    key_ref: str | None = None  # where the bridge key given at generation is kept, never the key itself
    issued_ms: int = 0  # tokens minted before expiry existed carry neither stamp: valid until revoked
    expires: int | None = None  # unix seconds

    def covers(self, domain: str, session_name: str) -> bool:
        return session_name == self.session_name and domain in self.domains


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, f"{PREFIX}.{payload}".encode(), hashlib.sha256).digest())


def mint(
    secret: bytes,
    session_name: str,
    domains: Iterable[str],
    *,
    bridge_base_url: str | None = None,
    pool: str | None = None,
    key_ref: str | None = None,
    issued_ms: int | None = None,
    expires: int | None = None,
) -> str:
    """Return a token that lets its holder register and heartbeat session_name on these domains only."""
    claims: dict = {"n": session_name, "d": sorted(set(domains))}
    optional = {"b": bridge_base_url, "p": pool, "k": key_ref, "i": issued_ms, "e": expires}
    claims.update({k: v for k, v in optional.items() if v is not None})
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{PREFIX}.{payload}.{_signature(secret, payload)}"


def scope(secret: bytes, token: str) -> Scope | None:
    """Return what a genuine token covers, or None for anything else (expiry and revocation are not checked here)."""
    try:
        prefix, payload, signature = token.split(".")
    except ValueError:
        return None
    # compare_digest refuses non-ASCII text, and no genuine token has any.
    if prefix != PREFIX or not token.isascii() or not hmac.compare_digest(signature, _signature(secret, payload)):
        return None
    try:
        claims = json.loads(_unb64(payload))
        found = Scope(
            str(claims["n"]),
            frozenset(claims["d"]),
            claims.get("b"),
            claims.get("p"),
            claims.get("k"),
            int(claims.get("i", 0)),
            None if claims.get("e") is None else int(claims["e"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return found


def valid_scope(token: str) -> Scope | None:
    """Return the scope of a genuine token that has not expired, or None (revocation is checked per session)."""
    found = scope(current_app.extensions["regtoken_secret"], token)
    if found is None or (found.expires is not None and found.expires <= time.time()):
        return None
    return found


def revoked(found: Scope, domain: str, session_name: str) -> bool:
    """Return whether the admin revoked the session's tokens after this one was issued."""
    before = token_state().get(f"revoked:{domain}/{session_name}").get("before_ms")
    return before is not None and found.issued_ms <= before


def allows(token: str, domain: str, session_name: str) -> bool:
    """Return whether token covers (domain, session_name) now: genuine, unexpired, not revoked."""
    found = valid_scope(token)
    return found is not None and found.covers(domain, session_name) and not revoked(found, domain, session_name)


def revoke(domain: str, session_name: str) -> int:
    """Invalidate every token of one session issued until now; return the cut-off in unix milliseconds."""
    now = time.time_ns() // 1_000_000
    token_state().update(f"revoked:{domain}/{session_name}", lambda record: {**record, "before_ms": now})
    return now


def issue(
    session_name: str,
    domains: Iterable[str],
    *,
    bridge_base_url: str | None = None,
    pool: str | None = None,
    bridge_api_key: str | None = None,
) -> tuple[str, int]:
    """Mint a token for a generated script, keeping any bridge key on the server; return it and its expiry."""
    # A millisecond after any revocation made until now, so a token issued at once after one still counts.
    issued_ms = time.time_ns() // 1_000_000 + 1
    expires = int(time.time()) + current_app.config["GATEWAY_USERSCRIPT_TOKEN_DAYS"] * DAY
    key_ref = None
    if bridge_api_key:
        key_ref = secrets.token_urlsafe(16)
        token_state().update(f"key:{key_ref}", lambda _: {"key": bridge_api_key, "expires": expires})
    token = mint(
        current_app.extensions["regtoken_secret"],
        session_name,
        domains,
        bridge_base_url=bridge_base_url,
        pool=pool,
        key_ref=key_ref,
        issued_ms=issued_ms,
        expires=expires,
    )
    return token, expires


def bridge_key(found: Scope) -> str | None:
    """Return the bridge key kept for a token's scope, or None."""
    return token_state().get(f"key:{found.key_ref}").get("key") if found.key_ref else None


def token_state() -> FileState | RedisState:
    return current_app.extensions["token_state"]


def init_app(app: Flask) -> None:
    """Load the signing secret (GATEWAY_USERSCRIPT_SECRET, else generated once into storage/) and the token state."""
    app.extensions["regtoken_secret"] = signing_secrets.load(app, "GATEWAY_USERSCRIPT_SECRET", SECRET_FILE)
    config = app.config
    timeout = config["GATEWAY_STORE_LOCK_TIMEOUT"]
    if config["SESSION_STORE"] == "redis":
        app.extensions["token_state"] = RedisState(config["REDIS_URL"], timeout=timeout, kind="tokens")
    else:
        path = storage_file(config, "tokens.json")
        app.extensions["token_state"] = FileState(path, timeout, kind="tokens", durable=True)
