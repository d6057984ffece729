"""A value fetched from an upstream, kept fresh without making requests wait on a slow upstream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Refreshing(Generic[T]):
    """Fresh for `ttl`; then the stale value is served while one background fetch replaces it.

    Only a cold cache makes a caller wait (bounded by the fetch's own timeout). A failed fetch keeps the last good
    value and is not retried for `failure_ttl`, so a down upstream is not asked on every request.
    """

    def __init__(self, fetch: Callable[[], T | None], ttl: float, failure_ttl: float) -> None:
        self._fetch, self.ttl, self.failure_ttl = fetch, ttl, failure_ttl
        self._value: T | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self._refreshing = False
        self._version = 0

    def version(self) -> int:
        """Return a number that changes whenever the value is replaced (starting a refresh when due, as get() does)."""
        self.get()
        return self._version

    def get(self) -> T | None:
        if time.monotonic() < self._expires:
            return self._value
        if self._value is None:
            with self._lock:
                if time.monotonic() >= self._expires:
                    self._refresh()
            return self._value
        with self._lock:
            start = not self._refreshing and time.monotonic() >= self._expires
            self._refreshing = self._refreshing or start
        if start:
            threading.Thread(target=self._background, name="refresh", daemon=True).start()
        return self._value

    def _background(self) -> None:
        try:
            with self._lock:
                self._refresh()
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        value = self._fetch()
        if value is not None:
            self._value = value
            self._version += 1
        self._expires = time.monotonic() + (self.ttl if value is not None else self.failure_ttl)
