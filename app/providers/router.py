"""Which providers may serve a request, in what order; the merged model list; cached upstream health."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app

from ..config import PROVIDER_NAMES, ConfigError
from ..errors import GatewayError, InvalidRequestError, NotFoundError, StoreCorrupt
from .base import Provider, ProviderSettings
from .breaker import Breaker
from .bridge_files import BridgeFiles
from .dispatch import Dispatcher, RetryPolicy
from .lmarena_bridge import LMArenaBridge
from .yupp2api import Yupp2Api

log = logging.getLogger(__name__)

SELECTORS = ("auto", "bridge_direct", "yupp2api")


class Router:
    """The providers configured for one app, and the policy shared by their requests."""

    def __init__(
        self,
        providers: list[Provider],
        enabled: set[str],
        breaker: Breaker,
        *,
        policy: RetryPolicy | None = None,
        budget: float = 300.0,
        routes: dict[str, tuple[str, ...]] | None = None,
        health_cache_seconds: float = 5.0,
        bridge_factory: Callable[[str], LMArenaBridge] | None = None,
        max_bridges: int = 64,
    ) -> None:
        self.all_providers = providers
        self.providers = [p for p in providers if p.name in enabled]
        self.breaker, self.policy, self.budget = breaker, policy or RetryPolicy(), budget
        self.routes = routes or {}
        self.health_cache_seconds = health_cache_seconds
        self._health: tuple[float, dict[str, Any]] = (0.0, {})
        self._health_lock = threading.Lock()
        self._bridge_factory = bridge_factory
        self._session_bridges: dict[str, LMArenaBridge] = {}
        self._bridges_lock = threading.Lock()
        self._max_bridges = max_bridges

    def _enabled(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def bridge(self) -> LMArenaBridge:
        """Return the LMArena Bridge provider; raise when it is disabled (images and sessions need it)."""
        bridge = self._enabled("lmarena_bridge")
        if bridge is None:
            raise InvalidRequestError(
                "This needs LMArena Bridge, which is disabled (LMARENA_BRIDGE_ENABLED=false).", code="provider_disabled"
            )
        return bridge

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

    def plan(
        self, model: str, selector: str | None = None, session_url: str | None = None, session: bool = False
    ) -> list[Provider]:
        """Return the providers to try for a model, best first.

        :raise InvalidRequestError: for an unknown or disabled X-Provider, or one that cannot serve a session.
        :raise NotFoundError: when every provider's model list is known and none lists the model.
        """
        selector = (selector or "auto").strip().lower()
        if selector != "auto":
            name = PROVIDER_NAMES.get(selector)
            if name is None:
                raise InvalidRequestError(
                    f"X-Provider must be one of {', '.join(SELECTORS)}; got {selector[:40]!r}.",
                    param="X-Provider",
                    code="invalid_provider",
                )
            provider = self._enabled(name)
            if provider is None:
                raise InvalidRequestError(
                    f"X-Provider {selector} is not enabled on this gateway.",
                    param="X-Provider",
                    code="provider_disabled",
                )
            if session and name != "lmarena_bridge":
                raise InvalidRequestError(
                    f"Sessions are LMArena Bridge sessions; X-Session-Name cannot be used with X-Provider {selector}.",
                    param="X-Provider",
                    code="invalid_provider",
                )
            return [self.bridge_for(session_url) if name == "lmarena_bridge" else provider]
        if session:
            return [self.bridge_for(session_url)]
        routed = [p for name in self.routes.get(model, ()) if (p := self._enabled(name))]
        if routed:
            return routed
        serving, unknown = [], []
        for provider in self.providers:
            ids = provider.known_models()
            if ids is None:
                unknown.append(provider)
            elif model in ids:
                serving.append(provider)
        candidates = serving + unknown
        if not candidates:
            raise NotFoundError(
                f"The model {model!r} is not served by any provider; see GET /v1/models.",
                param="model",
                code="model_not_found",
            )
        # Providers whose circuit is open go last: they are tried only when their probe is due.
        return sorted(candidates, key=lambda p: self.breaker.retry_in(p.name) is not None)

    def dispatcher(self, plan: list[Provider]) -> Dispatcher:
        """Return a Dispatcher for one request over plan."""
        return Dispatcher(plan, self.breaker, self.policy, self.budget)

    def models(self) -> list[dict[str, Any]]:
        """Return every enabled provider's models, the first provider winning a duplicate id."""
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
        """Return each enabled provider's health, asking upstreams at most once per cache period."""
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
            result = {p.name: {**p.describe(), **p.health(), "checked_at": checked_at} for p in self.providers}
            self._health = (time.monotonic() + self.health_cache_seconds, result)
            return result
        finally:
            self._health_lock.release()

    def status(self) -> list[dict[str, Any]]:
        """Return every provider's configuration and shared circuit state (no secrets)."""
        result = []
        for provider in self.all_providers:
            enabled = provider in self.providers
            ids = provider.known_models() if enabled else None
            result.append(
                {
                    "name": provider.name,
                    "x_provider": provider.selector,
                    "enabled": enabled,
                    "base_url": provider.client.public_url,
                    "max_retries": provider.max_retries,
                    "timeouts": {
                        "connect": provider.settings.connect_timeout,
                        "first_byte": provider.settings.first_byte_timeout,
                        "idle": provider.settings.idle_timeout,
                    },
                    "circuit": self.breaker.snapshot(provider.name) if enabled else None,
                    "models_count": len(ids) if ids is not None else None,
                }
            )
        return result

    def close(self) -> None:
        for provider in [*self.all_providers, *self._session_bridges.values()]:
            provider.close()


def _settings(config, prefix: str, base_url: str | None = None) -> ProviderSettings:
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


def _shared_state(config):
    """Return where circuit state lives: Redis with the Redis session store, else a file beside the sessions."""
    if config["SESSION_STORE"] == "redis":
        from ..store.breaker_state import RedisState

        return RedisState(config["REDIS_URL"], timeout=config["GATEWAY_STORE_LOCK_TIMEOUT"])
    from ..store.breaker_state import FileState

    path = os.path.join(os.path.dirname(config["STORAGE_PATH"]), "providers.json")
    try:
        return FileState(path, config["GATEWAY_STORE_LOCK_TIMEOUT"])
    except StoreCorrupt:
        # Circuit state is only a cache of recent failures: set a bad file aside and start afresh.
        aside = f"{path}.corrupt-{int(time.time())}"
        os.replace(path, aside)
        log.warning("provider state file was corrupt; moved to %s", aside)
        return FileState(path, config["GATEWAY_STORE_LOCK_TIMEOUT"])


def init_app(app: Flask) -> None:
    """Build the providers from the settings; bad bridge files fail here, at start-up."""
    config = app.config
    files = BridgeFiles(config["LMARENA_BRIDGE_MODELS_FILE"], config["LMARENA_BRIDGE_CONFIG_FILE"])

    def make_bridge(base_url: str) -> LMArenaBridge:
        return LMArenaBridge(_settings(config, "LMARENA_BRIDGE", base_url), files)

    enabled = {
        name
        for name, flag in (("lmarena_bridge", "LMARENA_BRIDGE_ENABLED"), ("yupp2api", "YUPP2API_ENABLED"))
        if config[flag]
    }
    if not enabled:
        raise ConfigError("LMARENA_BRIDGE_ENABLED and YUPP2API_ENABLED are both false: no provider to route to")
    bridge_timeout = files.config.get("stream_response_timeout_seconds")
    if isinstance(bridge_timeout, (int, float)) and bridge_timeout > config["LMARENA_BRIDGE_TIMEOUT"]:
        log.warning(
            "LMARENA_BRIDGE_TIMEOUT (%gs) is shorter than the bridge's stream_response_timeout_seconds (%gs): "
            "slow answers will be cut by the gateway first",
            config["LMARENA_BRIDGE_TIMEOUT"],
            bridge_timeout,
        )
    breaker = Breaker(
        _shared_state(config), config["GATEWAY_BREAKER_FAILURES"], config["GATEWAY_BREAKER_COOLDOWN_SECONDS"]
    )
    policy = RetryPolicy(
        config["GATEWAY_RETRY_BASE_DELAY"], config["GATEWAY_RETRY_MAX_DELAY"], config["GATEWAY_RETRY_AFTER_CAP"]
    )
    app.extensions["router"] = Router(
        [make_bridge(config["LMARENA_BRIDGE_BASE_URL"]), Yupp2Api(_settings(config, "YUPP2API"))],
        enabled,
        breaker,
        policy=policy,
        budget=config["GATEWAY_REQUEST_BUDGET_SECONDS"],
        routes=config["GATEWAY_MODEL_ROUTES"],
        health_cache_seconds=config["GATEWAY_HEALTH_CACHE_SECONDS"],
        bridge_factory=make_bridge,
    )


def get_router() -> Router:
    """Return the current app's router."""
    return current_app.extensions["router"]
