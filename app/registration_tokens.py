"""Registration tokens: what a userscript carries instead of the admin key, good for one session name and domains."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable

from flask import Flask, current_app

from . import signing_secrets

PREFIX = "v1"
SECRET_FILE = "userscript.secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, f"{PREFIX}.{payload}".encode(), hashlib.sha256).digest())


def mint(secret: bytes, session_name: str, domains: Iterable[str]) -> str:
    """Return a token that lets its holder register and heartbeat session_name on these domains only."""
    payload = _b64(json.dumps({"n": session_name, "d": sorted(set(domains))}, separators=(",", ":")).encode())
    return f"{PREFIX}.{payload}.{_signature(secret, payload)}"


def scope(secret: bytes, token: str) -> tuple[str, frozenset[str]] | None:
    """Return (session_name, domains) a genuine token covers, or None for anything else."""
    try:
        prefix, payload, signature = token.split(".")
    except ValueError:
        return None
    # compare_digest refuses non-ASCII text, and no genuine token has any.
    if prefix != PREFIX or not token.isascii() or not hmac.compare_digest(signature, _signature(secret, payload)):
        return None
    try:
        claims = json.loads(_unb64(payload))
        return str(claims["n"]), frozenset(claims["d"])
    except (ValueError, KeyError, TypeError):
        return None


def allows(token: str, domain: str, session_name: str) -> bool:
    """Return whether token covers (domain, session_name) under the current secret."""
    covered = scope(current_app.extensions["regtoken_secret"], token)
    return covered is not None and covered[0] == session_name and domain in covered[1]


def init_app(app: Flask) -> None:
    """Load the signing secret: GATEWAY_USERSCRIPT_SECRET, else one generated once into the storage folder."""
    app.extensions["regtoken_secret"] = signing_secrets.load(app, "GATEWAY_USERSCRIPT_SECRET", SECRET_FILE)
