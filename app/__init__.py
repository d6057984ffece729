"""LMArena AI Gateway: an OpenAI-compatible gateway in front of LMArenaBridge."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_cors import CORS

from . import (
    analytics,
    auth,
    cross_site,
    inflight,
    logs,
    providers,
    ratelimit,
    registration_tokens,
    request_record,
    security_headers,
    storage_folder,
    store,
)
from .api import register_blueprints
from .cli import register_commands
from .config import ROOT, load_settings
from .errors import register_errorhandlers
from .version import __version__

__all__ = ["__version__", "create_app"]

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway; raise ConfigError naming the setting when the configuration cannot work."""
    settings = load_settings(test_config)
    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=None)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["GATEWAY_MAX_BODY_BYTES"]
    logs.init_app(app)
    configure_json(app)
    register_services(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    security_headers.init_app(app)
    warn_if_open(app)
    return app


def configure_json(app: Flask) -> None:
    """Answer compact UTF-8 JSON in the order fields were built, as OpenAI does."""
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.json.compact = True


def register_services(app: Flask) -> None:
    """Set up the private storage folder, session store, signing secrets, analytics, cross-site checks, limits,
    providers and CORS."""
    app.extensions["started"] = time.monotonic()
    storage_folder.init_app(app)
    store.init_app(app)
    registration_tokens.init_app(app)
    auth.init_app(app)
    analytics.init_app(app)
    request_record.init_app(app)
    cross_site.init_app(app)
    ratelimit.init_app(app)
    inflight.init_app(app)
    providers.init_app(app)
    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(
            app,
            origins=list(origins),
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-API-Key",
                "X-Provider",
                "X-Session-Name",
                "X-Session-Pool",
                "X-Target-Domain",
                "X-Request-Id",
            ],
            expose_headers=[
                "X-Request-Id",
                "X-Gateway-Provider",
                "Retry-After",
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        )


def warn_if_open(app: Flask) -> None:
    """Say loudly when /v1 or the management endpoints need no key."""
    if not app.config["GATEWAY_API_KEYS"]:
        log.warning("GATEWAY_API_KEYS is not set: /v1 is open to anyone who can reach this gateway")
    if not app.config["GATEWAY_ADMIN_KEY"]:
        log.warning("GATEWAY_ADMIN_KEY is not set: /session management is open to anyone who can reach this gateway")
