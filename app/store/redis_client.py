"""The one place the gateway opens Redis: sessions, breaker state and the rate limit share its options."""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_CAP = 2.0


def connect(url: str, timeout: float) -> Any:
    """Return a Redis client for url: replies as str, each command given up after timeout seconds."""
    import redis  # only deployments that choose Redis need the package

    # A Redis that is down should be reported within 2 s even when commands may take longer (a long lock timeout).
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=min(timeout, CONNECT_TIMEOUT_CAP),
        socket_timeout=timeout,
        decode_responses=True,
    )
