"""The session store service: JSON file by default, Redis when SESSION_STORE=redis."""

from __future__ import annotations

from flask import Flask, current_app

from ..config import ConfigError
from ..errors import StoreError
from .base import Session, SessionStore

__all__ = ["Session", "SessionStore", "get_store", "init_app"]


def init_app(app: Flask) -> None:
    """Open the configured store; an unreadable or corrupt one stops start-up, naming the setting."""
    config = app.config
    try:
        if config["SESSION_STORE"] == "redis":
            from .redis_store import RedisSessionStore

            store: SessionStore = RedisSessionStore(config["REDIS_URL"], timeout=config["GATEWAY_STORE_LOCK_TIMEOUT"])
        else:
            from .file_store import JsonSessionStore

            store = JsonSessionStore(config["STORAGE_PATH"], lock_timeout=config["GATEWAY_STORE_LOCK_TIMEOUT"])
    except StoreError as exc:
        setting = "REDIS_URL" if config["SESSION_STORE"] == "redis" else "STORAGE_PATH"
        raise ConfigError(f"{setting}: {exc.message}") from None
    app.extensions["session_store"] = store


def get_store() -> SessionStore:
    """Return the current app's session store."""
    return current_app.extensions["session_store"]
