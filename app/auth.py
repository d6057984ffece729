"""Client and admin API keys, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from flask import current_app, request

from . import registration_tokens
from .errors import AuthenticationError, PermissionDenied


def _digest(value: str) -> bytes:
    # Hashing first gives equal-length inputs to compare_digest, so neither key length nor non-ASCII leaks.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def key_matches(provided: str, keys: Iterable[str]) -> bool:
    """Return whether provided equals one of keys, looking at every key."""
    provided_digest = _digest(provided)
    found = False
    for key in keys:
        found |= hmac.compare_digest(provided_digest, _digest(key))
    return found


def provided_key() -> str:
    """Return the key from `Authorization: Bearer` or `X-API-Key`, or ''."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip()


def provided_admin_key() -> str:
    """Return the key from `X-Admin-Key`, else from `Authorization: Bearer`/`X-API-Key`, or ''."""
    return request.headers.get("X-Admin-Key", "").strip() or provided_key()


def require_client_key() -> None:
    """Reject a /v1 request without a valid client key, unless the gateway runs open."""
    keys = current_app.config["GATEWAY_API_KEYS"]
    if not keys or request.method == "OPTIONS":
        return
    key = provided_key()
    if not key:
        raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    if not key_matches(key, keys):
        raise AuthenticationError("Incorrect API key provided.")


def require_admin() -> None:
    """Reject a management request without the admin key, when one is configured."""
    admin_key = current_app.config["GATEWAY_ADMIN_KEY"]
    if not admin_key or request.method == "OPTIONS":
        return
    key = provided_admin_key()
    if not key:
        raise AuthenticationError("This endpoint needs the admin key: 'Authorization: Bearer <GATEWAY_ADMIN_KEY>'.")
    if not key_matches(key, (admin_key,)):
        raise AuthenticationError("Incorrect admin key provided.")


def require_admin_or_token(domain: str, name: str) -> bool:
    """Accept the admin key, or a userscript's registration token covering (domain, name); True for a token."""
    token = request.headers.get("X-Registration-Token", "").strip()
    if not token or not current_app.config["GATEWAY_ADMIN_KEY"]:
        require_admin()
        return False
    if registration_tokens.scope(current_app.extensions["regtoken_secret"], token) is None:
        raise AuthenticationError(
            "Invalid or revoked registration token: generate the userscript again.", code="invalid_registration_token"
        )
    if not registration_tokens.allows(token, domain, name):
        raise PermissionDenied(f"This registration token does not cover session '{name}' on {domain}.")
    return True
