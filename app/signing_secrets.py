"""Signing secrets: each from its setting, else generated once into a private file in the storage folder."""

from __future__ import annotations

import logging
import os
import secrets
import time

from flask import Flask

from .config import ConfigError, storage_file

log = logging.getLogger(__name__)


def load(app: Flask, setting: str, file_name: str) -> bytes:
    """Return the secret the setting holds, else the one in file_name in the storage folder, generated once."""
    configured = app.config[setting]
    if configured:
        return configured.encode()
    path = storage_file(app.config, file_name)
    if app.config["SESSION_STORE"] == "redis":
        # Redis means several instances, and the file is one machine's: what another instance signed fails here.
        log.warning(
            "%s is not set: this instance signs with its own secret in %s, so what other instances signed fails "
            "here; give every instance the same %s",
            setting,
            path,
            setting,
        )
    try:
        secret, created = _read_or_create(path)
    except OSError as exc:
        raise ConfigError(f"{setting} is empty and {path} cannot be created: {exc.strerror}") from None
    if created:
        log.info("generated the value of %s in %s (delete the file to replace it)", setting, path)
    return secret


def _read_or_create(path: str) -> tuple[bytes, bool]:
    try:
        # O_EXCL: when several Passenger processes start together, exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process may have created it a moment ago and still be writing: wait for it, briefly.
        for _ in range(100):
            with open(path, "rb") as f:
                secret = f.read().strip()
            if secret:
                return secret, False
            time.sleep(0.01)
        raise OSError(0, "it is empty") from None
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_urlsafe(48).encode())
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        return f.read().strip(), True
