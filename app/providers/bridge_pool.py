"""The LMArena bridges sessions are bound to: one provider per bridge URL and key, built when first used, bounded."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .lmarena_bridge import LMArenaBridge

# A bridge is known by its URL and the key it is sent (None: the configured LMARENA_BRIDGE_API_KEY).
Address = tuple[str, str | None]


class BridgePool:
    """The configured bridge, and one LMArenaBridge per other (base URL, key) a session names."""

    def __init__(
        self, default: LMArenaBridge, factory: Callable[[str, str | None], LMArenaBridge], limit: int = 64
    ) -> None:
        self.default, self.factory, self.limit = default, factory, limit
        self._bridges: dict[Address, LMArenaBridge] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str | None, api_key: str | None = None) -> LMArenaBridge:
        """Return the bridge at base_url sent api_key (its own pooled connections), or the configured one."""
        if not api_key and (not base_url or base_url == self.default.base_url):
            return self.default
        # Keyed by both: two sessions on one URL with different keys never send each other's key.
        address = (base_url or self.default.base_url, api_key or None)
        bridge = self._bridges.get(address)
        if bridge is None:
            with self._lock:
                bridge = self._bridges.get(address)
                if bridge is None:
                    if len(self._bridges) >= self.limit:
                        # Sessions come and go; keep the idle connections bounded.
                        oldest = next(iter(self._bridges))
                        self._bridges.pop(oldest).close()
                    bridge = self._bridges[address] = self.factory(*address)
        return bridge

    def members(self) -> list[LMArenaBridge]:
        """Return the configured bridge and every session bridge built so far."""
        return [self.default, *self._bridges.copy().values()]

    def close(self) -> None:
        """Close every session bridge's connections (the default is closed with the other providers)."""
        with self._lock:
            bridges, self._bridges = list(self._bridges.values()), {}
        for bridge in bridges:
            bridge.close()
