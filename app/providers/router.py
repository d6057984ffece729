"""Which provider serves a request, the merged model list, and cached upstream health."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, current_app

from ..errors import GatewayError
from .base import ChatRequest, Provider
from .bridge_files import BridgeFiles
from .lmarena_bridge import LMArenaBridge

log = logging.getLogger(__name__)


class Router:
    """The providers configured for one app."""

    def __init__(
        self, providers: list[Provider], health_cache_seconds: float = 5.0, bridge_factory=None, max_bridges: int = 64
    ) -> None:
        self.providers = providers
        self.health_cache_seconds = health_cache_seconds
        self._health: tuple[float, dict[str, Any]] = (0.0, {})
        self._health_lock = threading.Lock()
        self._bridge_factory = bridge_factory
        self._session_bridges: dict[str, LMArenaBridge] = {}
        self._bridges_lock = threading.Lock()
        self._max_bridges = max_bridges

    @property
    def bridge(self) -> LMArenaBridge:
        return next(p for p in self.providers if isinstance(p, LMArenaBridge))

    def bridge_for(self, base_url: str | None) -> LMArenaBridge:
        """Return the bridge at base_url (a session's own bridge instance), or the configured one."""
        default = self.bridge
        if not base_url or base_url == default.client.base_url or self._bridge_factory is None:
            return default
        bridge = self._session_bridges.get(base_url)
        if bridge is None:
            with self._bridges_lock:
                bridge = self._session_bridges.get(base_url)
                if bridge is None:
                    if len(self._session_bridges) >= self._max_bridges:
                        # Sessions come and go; keep the pool of idle connections bounded.
                        oldest = next(iter(self._session_bridges))
                        self._session_bridges.pop(oldest).close()
                    bridge = self._session_bridges[base_url] = self._bridge_factory(base_url)
        return bridge

    def for_chat(self, request: ChatRequest, base_url: str | None = None) -> Provider:
        """Return the provider for a chat request."""
        return self.bridge_for(base_url)

    def models(self) -> list[dict[str, Any]]:
        """Return every provider's models, first provider winning a duplicate id."""
        seen: dict[str, dict[str, Any]] = {}
        errors: list[GatewayError] = []
        for provider in self.providers:
            try:
                for model in provider.models():
                    seen.setdefault(model["id"], model)
            except GatewayError as exc:
                errors.append(exc)
        if errors and not seen:
            raise errors[0]
        return list(seen.values())

    def health(self) -> dict[str, Any]:
        """Return each provider's health, asking upstreams at most once per cache period."""
        expires, cached = self._health
        if time.monotonic() < expires:
            return cached
        # One caller refreshes; the others keep serving the previous answer instead of piling onto upstreams.
        if not self._health_lock.acquire(blocking=bool(not cached)):
            return cached
        try:
            expires, cached = self._health
            if time.monotonic() < expires:
                return cached
            checked_at = time.time()
            result = {}
            for provider in self.providers:
                entry = {**provider.describe(), **provider.health(), "checked_at": checked_at}
                result[provider.name] = entry
            self._health = (time.monotonic() + self.health_cache_seconds, result)
            return result
        finally:
            self._health_lock.release()

    def close(self) -> None:
        for provider in [*self.providers, *self._session_bridges.values()]:
            provider.close()


def init_app(app: Flask) -> None:
    """Build the providers from the settings; bad bridge files fail here, at start-up."""
    config = app.config
    files = BridgeFiles(
        config["LMARENA_BRIDGE_MODELS_FILE"],
        config["LMARENA_BRIDGE_CONFIG_FILE"],
        config["LMARENA_BRIDGE_MODEL_MAP_FILE"],
    )

    def make_bridge(base_url: str) -> LMArenaBridge:
        return LMArenaBridge(
            base_url=base_url,
            api_key=config["LMARENA_BRIDGE_API_KEY"],
            timeout=config["LMARENA_BRIDGE_TIMEOUT"],
            connect_timeout=config["LMARENA_BRIDGE_CONNECT_TIMEOUT"],
            files=files,
            models_cache_seconds=config["GATEWAY_MODELS_CACHE_SECONDS"],
            health_timeout=config["GATEWAY_HEALTH_TIMEOUT"],
        )

    bridge = make_bridge(config["LMARENA_BRIDGE_BASE_URL"])
    bridge_timeout = files.config.get("stream_response_timeout_seconds")
    if isinstance(bridge_timeout, (int, float)) and bridge_timeout > config["LMARENA_BRIDGE_TIMEOUT"]:
        log.warning(
            "LMARENA_BRIDGE_TIMEOUT (%gs) is shorter than the bridge's stream_response_timeout_seconds (%gs): "
            "slow answers will be cut by the gateway first",
            config["LMARENA_BRIDGE_TIMEOUT"],
            bridge_timeout,
        )
    app.extensions["router"] = Router([bridge], config["GATEWAY_HEALTH_CACHE_SECONDS"], bridge_factory=make_bridge)


def get_router() -> Router:
    """Return the current app's router."""
    return current_app.extensions["router"]
