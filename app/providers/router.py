"""Which providers may serve a request, in what order; the merged model list; cached upstream health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..config import PROVIDER_NAMES
from ..errors import GatewayError, InvalidRequestError, NotFoundError
from .base import Provider
from .breaker import CLOSED, Breaker
from .bridge_pool import BridgePool
from .dispatch import Dispatcher, RetryPolicy
from .lmarena_bridge import LMArenaBridge, bridge_key, bridge_url
from .pools import Member, PoolRequest, Pools
from .transport import redact_url

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
        bridges: BridgePool | None = None,
        pool_cooldown: float = 60.0,
    ) -> None:
        self.all_providers = providers
        self.providers = [p for p in providers if p.name in enabled]
        self.breaker, self.policy, self.budget = breaker, policy or RetryPolicy(), budget
        self.routes = routes or {}
        self.health_cache_seconds = health_cache_seconds
        self._health: tuple[float, dict[str, Any]] = (0.0, {})
        self._health_lock = threading.Lock()
        self._bridge_counts: tuple[float, dict[str, int]] = (0.0, {})
        self.bridges = bridges
        self.pools = Pools(breaker, pool_cooldown)

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

    def bridge_for(self, base_url: str | None, api_key: str | None = None) -> LMArenaBridge:
        """Return the bridge at base_url sent api_key (a session's own bridge), or the configured one."""
        bridge = self.bridge  # raises when the bridge is disabled
        return self.bridges.get(base_url, api_key) if self.bridges is not None else bridge

    def plan(
        self,
        model: str,
        selector: str | None = None,
        session_url: str | None = None,
        session: bool = False,
        session_key: str | None = None,
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
            return [self.bridge_for(session_url, session_key) if name == "lmarena_bridge" else provider]
        if session:
            return [self.bridge_for(session_url, session_key)]
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
        return sorted(candidates, key=lambda p: self.breaker.retry_in(p.breaker_key) is not None)

    def knows(self, model: str) -> bool | None:
        """Return whether a route or a provider's model list names model; None when some list cannot say.

        Only lists already fetched count: this never asks an upstream.
        """
        if model in self.routes:
            return True
        undecided = False
        for provider in self.providers:
            ids = provider.cached_models()
            if ids is None:
                undecided = True
            elif model in ids:
                return True
        return None if undecided else False

    def plan_pool(
        self, selector: str | None, domain: str, name: str, members: list[Member]
    ) -> tuple[list[Provider], PoolRequest]:
        """Return the member bridges a pool request tries, in this turn's order, and the request's walk."""
        self.plan("", selector, session=True)  # the same X-Provider checks as a session's
        walk = self.pools.request(domain, name, members, self.bridge_for)
        return list(walk.members), walk

    def dispatcher(self, plan: list[Provider], pool: PoolRequest | None = None) -> Dispatcher:
        """Return a Dispatcher for one request over plan (a pool's members, when pool is given)."""
        return Dispatcher(plan, self.breaker, self.policy, self.budget, pool=pool, cooldown=self.pools.cooldown)

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

    def known_bridges(self) -> dict[str, tuple[str, str]]:
        """Return every bridge's circuit name -> (public URL, source), the configured bridge first.

        Sources: "configured"; "session", a session's bridge this process has built; "shared_state", a bridge
        known only from the circuit records (another process's, or one this process has let go).
        """
        if self._enabled("lmarena_bridge") is None:
            return {}
        members = self.bridges.members() if self.bridges is not None else [self.bridge]
        known: dict[str, tuple[str, str]] = {}
        for index, bridge in enumerate(members):
            known.setdefault(bridge.breaker_key, (bridge.public_url, "session" if index else "configured"))
        for key in self.breaker.names():
            if (url := bridge_url(key)) is not None:
                known.setdefault(key, (url, "shared_state"))
        return known

    def bridge_status(self) -> list[dict[str, Any]]:
        """Return every known bridge with its circuit (for the admin: URLs included, never credentials)."""
        return [
            {"base_url": url, "source": source, "circuit": self.breaker.snapshot(key)}
            for key, (url, source) in self.known_bridges().items()
        ]

    def circuit_of(self, base_url: str | None) -> tuple[str, str]:
        """Return the public URL and circuit name of the bridge at base_url (a session's), or the configured one's."""
        # The configured bridge even when disabled: sessions registered before keep their status rows.
        configured = self.bridges.default if self.bridges is not None else self.bridge
        url = redact_url(base_url) if base_url else configured.public_url
        return url, bridge_key(url)

    def prune_bridges(self, in_use: Iterable[str | None], idle_before: float, dry_run: bool = False) -> list[str]:
        """Remove (or list) the circuit records of bridges idle since idle_before that nothing here uses any more.

        in_use holds the sessions' bridge_base_url values; the configured bridge and providers are always kept.
        Return the public URLs of the bridges whose records went.
        """
        keep = {p.breaker_key for p in self.all_providers} | {self.circuit_of(url)[1] for url in in_use}
        stale = [key for key in self.breaker.names() if bridge_url(key) is not None and key not in keep]
        gone = self.breaker.forget(stale, idle_before, dry_run)
        return [url for key in gone if (url := bridge_url(key)) is not None]

    def bridge_counts(self) -> dict[str, int]:
        """Return how many known bridges have a closed circuit, of how many (no URLs: /health shows this)."""
        expires, counts = self._bridge_counts
        if time.monotonic() < expires:
            return counts
        known = self.known_bridges()
        up = sum(self.breaker.state_of(key) == CLOSED for key in known)
        counts = {"up": up, "total": len(known)}
        self._bridge_counts = (time.monotonic() + self.health_cache_seconds, counts)
        return counts

    def status(self) -> list[dict[str, Any]]:
        """Return every provider's configuration and shared circuit state (no secrets); the bridge lists each bridge."""
        result = []
        for provider in self.all_providers:
            enabled = provider in self.providers
            ids = provider.known_models() if enabled else None
            bridges = {"bridges": self.bridge_status()} if enabled and provider.name == "lmarena_bridge" else {}
            result.append(
                {
                    "name": provider.name,
                    "x_provider": provider.selector,
                    "enabled": enabled,
                    "base_url": provider.public_url,
                    "max_retries": provider.max_retries,
                    "timeouts": {
                        "connect": provider.settings.connect_timeout,
                        "first_byte": provider.settings.first_byte_timeout,
                        "idle": provider.settings.idle_timeout,
                    },
                    "circuit": self.breaker.snapshot(provider.breaker_key) if enabled else None,
                    "models_count": len(ids) if ids is not None else None,
                    **bridges,
                }
            )
        return result

    def close(self) -> None:
        """Close every provider's pooled connections."""
        for provider in self.all_providers:
            provider.close()
        if self.bridges is not None:
            self.bridges.close()
