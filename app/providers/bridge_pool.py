"""The LMArena bridges sessions are bound to: one provider per bridge URL, built when first used, kept bounded."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .lmarena_bridge import LMArenaBridge


class BridgePool:
    """The configured bridge, and one LMArenaBridge per other base URL a session names."""

    def __init__(self, default: LMArenaBridge, factory: Callable[[str], LMArenaBridge], limit: int = 64) -> None:
        self.default, self.factory, self.limit = default, factory, limit
        self._bridges: dict[str, LMArenaBridge] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str | None) -> LMArenaBridge:
        """Return the bridge at base_url (its own pooled connections), or the configured one."""
        if not base_url or base_url == self.default.base_url:
            return self.default
        bridge = self._bridges.get(base_url)
        if bridge is None:
            with self._lock:
                bridge = self._bridges.get(base_url)
                if bridge is None:
                    if len(self._bridges) >= self.limit:
                        # Sessions come and go; keep the idle connections bounded.
                        oldest = next(iter(self._bridges))
                        self._bridges.pop(oldest).close()
                    bridge = self._bridges[base_url] = self.factory(base_url)
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
