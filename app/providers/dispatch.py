"""Try providers in order with retries, backoff and a time budget, keeping the circuit breakers informed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from .base import ChatRequest, ChatStream, Chunk, Provider
from .breaker import Breaker
from .http import StreamTimer
from .stream import carries_content

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    base_delay: float = 0.5
    max_delay: float = 8.0
    retry_after_cap: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Return how long to wait before retry number attempt+1, or None when waiting is not worth it."""
        if retry_after is not None:
            # Honour the upstream's own word; past the cap another provider is the better bet.
            return retry_after if retry_after <= self.retry_after_cap else None
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter": spread out, never zero


@dataclass
class OpenedStream:
    """A stream that has produced its first content: nothing can be retried from here on."""

    provider: Provider
    stream: ChatStream
    rest: Iterator[Chunk]
    held: list[Chunk]


@dataclass
class Dispatcher:
    """One request's way through its candidate providers."""

    plan: list[Provider]
    breaker: Breaker
    policy: RetryPolicy
    budget: float
    stop: threading.Event = field(default_factory=threading.Event)
    attempts: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.budget

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def complete(self, chat: ChatRequest) -> tuple[Provider, dict]:
        """Return (provider, completion) from the first provider that answers."""
        return self._run(lambda provider, timeout: provider.chat(chat, timeout))

    def open_stream(self, chat: ChatRequest, on_open: Callable[[ChatStream | None], None]) -> OpenedStream:
        """Open a stream and read up to its first content, retrying and falling back before that point.

        Chunks without content (yupp2Api's role chunk) are held back, so a failure after them can still be
        retried invisibly. on_open(stream) lets the caller abort the stream being read from another thread.
        """

        def attempt(provider: Provider, timeout: float) -> OpenedStream:
            timer = StreamTimer(first_byte=timeout, idle=provider.settings.idle_timeout)
            stream = provider.stream(chat, timer)
            on_open(stream)
            try:
                rest, held = iter(stream), []
                for chunk in rest:
                    held.append(chunk)
                    if carries_content(chunk.obj):
                        break
                timer.commit()
                return OpenedStream(provider, stream, rest, held)
            except BaseException:
                on_open(None)
                stream.close()
                raise

        return self._run(attempt)[1]

    def failed_after_start(self, provider: Provider, error: GatewayError) -> None:
        """Count a failure that came after the stream started (it cannot be retried, but it is the provider's)."""
        if error.provider_fault:
            self.breaker.failure(provider.name, error)

    def _run(self, attempt: Callable[[Provider, float], T]) -> tuple[Provider, T]:
        last: GatewayError | None = None
        skipped = []
        for provider in self.plan:
            if not self.breaker.allow(provider.name):
                skipped.append(provider)
                continue
            for number in range(provider.max_retries + 1):
                timeout = min(provider.settings.first_byte_timeout, self.remaining())
                if timeout <= 0 or self.stop.is_set():
                    raise self._out_of_time(last)
                started = time.monotonic()
                try:
                    result = attempt(provider, timeout)
                except GatewayError as error:
                    last = error
                    self.attempts.append((provider.name, error.code))
                    if error.provider_fault:
                        self.breaker.failure(provider.name, error)
                    log.info("%s attempt %d failed: %s", provider.name, number + 1, error.code)
                    if not error.retryable or number == provider.max_retries:
                        break
                    delay = self.policy.delay(number, error.retry_after)
                    if delay is None or delay >= self.remaining() or self.stop.wait(delay):
                        break
                    continue
                self.attempts.append((provider.name, None))
                self.breaker.success(provider.name, (time.monotonic() - started) * 1000)
                return provider, result
            if last is not None and not last.fallback:
                raise last
        if last is None:
            raise self._all_open(skipped)
        raise last

    def _out_of_time(self, last: GatewayError | None) -> GatewayError:
        if self.stop.is_set() and last is not None:
            return last
        detail = f" Last failure: {last.message}" if last else ""
        return UpstreamTimeout(
            f"No provider answered within the request budget of {self.budget:g} s.{detail}",
            code="request_budget_exceeded",
        )

    def _all_open(self, skipped: list[Provider]) -> GatewayError:
        waits = [w for p in skipped if (w := self.breaker.retry_in(p.name)) is not None]
        names = ", ".join(p.name for p in skipped)
        return UpstreamUnavailable(
            f"Every provider for this request is failing and paused (circuit open: {names}); retry shortly.",
            code="circuit_open",
            retry_after=min(waits) if waits else None,
        )
