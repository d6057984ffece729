"""The upstream providers: built from the settings at start-up, reached through the app's Router."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flask import Flask, current_app

from ..config import ConfigError
from ..store.breaker_state import open_breaker_state
from .base import ProviderSettings
from .breaker import Breaker
from .bridge_files import BridgeFiles
from .bridge_pool import BridgePool
from .dispatch import RetryPolicy
from .lmarena_bridge import LMArenaBridge
from .router import Router
from .yupp2api import Yupp2Api

log = logging.getLogger(__name__)

SESSION_BRIDGE = "The session's bridge"


def init_app(app: Flask) -> None:
    """Build the providers from the settings; bad bridge files fail here, at start-up."""
    config = app.config
    files = BridgeFiles(config["LMARENA_BRIDGE_MODELS_FILE"], config["LMARENA_BRIDGE_CONFIG_FILE"])

    def session_bridge(base_url: str, api_key: str | None = None) -> LMArenaBridge:
        # Its errors say "the session's bridge": its URL is for the log and the admin's /providers/status.
        settings = provider_settings(config, "LMARENA_BRIDGE", base_url)
        if not api_key:
            return LMArenaBridge(settings, files, label=SESSION_BRIDGE)
        settings, source = replace(settings, api_key=api_key), "the session's bridge_api_key"
        return LMArenaBridge(settings, files, key_source=source, label=SESSION_BRIDGE)

    enabled = {
        name
        for name, flag in (("lmarena_bridge", "LMARENA_BRIDGE_ENABLED"), ("yupp2api", "YUPP2API_ENABLED"))
        if config[flag]
    }
    if not enabled:
        raise ConfigError("LMARENA_BRIDGE_ENABLED and YUPP2API_ENABLED are both false: no provider to route to")
    warn_if_bridge_outlasts(config, files)
    breaker = Breaker(
        open_breaker_state(config), config["GATEWAY_BREAKER_FAILURES"], config["GATEWAY_BREAKER_COOLDOWN_SECONDS"]
    )
    policy = RetryPolicy(
        config["GATEWAY_RETRY_BASE_DELAY"], config["GATEWAY_RETRY_MAX_DELAY"], config["GATEWAY_RETRY_AFTER_CAP"]
    )
    bridge = LMArenaBridge(provider_settings(config, "LMARENA_BRIDGE"), files)
    app.extensions["router"] = Router(
        [bridge, Yupp2Api(provider_settings(config, "YUPP2API"))],
        enabled,
        breaker,
        policy=policy,
        budget=config["GATEWAY_REQUEST_BUDGET_SECONDS"],
        routes=config["GATEWAY_MODEL_ROUTES"],
        health_cache_seconds=config["GATEWAY_HEALTH_CACHE_SECONDS"],
        bridges=BridgePool(bridge, session_bridge),
        pool_cooldown=config["GATEWAY_POOL_COOLDOWN_SECONDS"],
    )


def get_router() -> Router:
    """Return the current app's router."""
    return current_app.extensions["router"]


def provider_settings(config: Mapping[str, Any], prefix: str, base_url: str | None = None) -> ProviderSettings:
    """Return one provider's settings (prefix LMARENA_BRIDGE or YUPP2API), at base_url when given."""
    return ProviderSettings(
        base_url=base_url or config[f"{prefix}_BASE_URL"],
        api_key=config[f"{prefix}_API_KEY"],
        first_byte_timeout=config[f"{prefix}_TIMEOUT"],
        idle_timeout=config[f"{prefix}_IDLE_TIMEOUT"],
        connect_timeout=config[f"{prefix}_CONNECT_TIMEOUT"],
        max_retries=config[f"{prefix}_MAX_RETRIES"],
        models_cache_seconds=config["GATEWAY_MODELS_CACHE_SECONDS"],
        health_timeout=config["GATEWAY_HEALTH_TIMEOUT"],
        max_response_bytes=config["GATEWAY_MAX_UPSTREAM_BYTES"],
        ca_file=config["GATEWAY_UPSTREAM_CA_FILE"],
    )


def warn_if_bridge_outlasts(config: Mapping[str, Any], files: BridgeFiles) -> None:
    """Warn when the gateway would cut a slow answer before the bridge itself gives up on it."""
    bridge_timeout = files.config.get("stream_response_timeout_seconds")
    if isinstance(bridge_timeout, (int, float)) and bridge_timeout > config["LMARENA_BRIDGE_TIMEOUT"]:
        log.warning(
            "LMARENA_BRIDGE_TIMEOUT (%gs) is shorter than the bridge's stream_response_timeout_seconds (%gs): "
            "slow answers will be cut by the gateway first",
            config["LMARENA_BRIDGE_TIMEOUT"],
            bridge_timeout,
        )
