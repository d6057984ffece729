"""Try providers in order with retries, backoff and a time budget, keeping the circuit breakers informed."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from .base import ChatRequest, ChatStream, Chunk, Provider
from .breaker import Breaker
from .pools import PoolRequest, outcome
from .transport import StreamTimer

log = logging.getLogger(__name__)

T = TypeVar("T")
# A step of work that yields None each time the caller's wait limit passes, and returns its result.
Waiting = Generator[None, None, T]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts at one provider."""

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
    """A stream that has produced its first content (or ended): nothing can be retried from here on."""

    provider: Provider
    stream: ChatStream
    held: list[Chunk]


class Beat:
    """When the next keep-alive is due: waits are cut at it, and the waiting generator yields there."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.due = time.monotonic() + interval

    def left(self) -> float:
        """Return the seconds until the next keep-alive."""
        return self.due - time.monotonic()

    def passed(self) -> bool:
        """Return whether the keep-alive is due, starting the next interval if so."""
        now = time.monotonic()
        if now < self.due:
            return False
        self.due = now + self.interval
        return True

    def restart(self) -> None:
        """Start a new interval: something was just written, so no keep-alive is needed for a while."""
        self.due = time.monotonic() + self.interval


@dataclass
class Dispatcher:
    """One request's way through its candidate providers."""

    plan: list[Provider]
    breaker: Breaker
    policy: RetryPolicy
    budget: float
    last_provider: str | None = None
    attempt_count: int = 0
    # A pool request: its members are the plan, and a failure moves on or pauses a member as its outcome says.
    pool: PoolRequest | None = None
    deadline: float = field(init=False)
    # Circuits this request has reported to: a request counts once per circuit, however many attempts it made.
    _counted: set[str] = field(init=False, default_factory=set)
    _failed: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.budget

    def remaining(self) -> float:
        """Return the seconds left of the request's one deadline."""
        return self.deadline - time.monotonic()

    def complete(self, chat: ChatRequest) -> tuple[Provider, dict]:
        """Return (provider, completion) from the first provider that answers."""

        def attempt(provider: Provider, timeout: float) -> Waiting[dict]:
            self._for_member(provider, chat)
            return provider.chat(chat, timeout)
            yield  # a generator that never waits: a JSON answer sends no keep-alives

        steps = self._run(attempt, Beat(float("inf")))
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def open_stream(self, chat: ChatRequest, beat: Beat) -> Waiting[OpenedStream]:
        """Open a stream and read up to its first content, retrying and falling back before that point.

        Yields None whenever a keep-alive is due (beat) while nothing is known yet. Chunks without content
        (yupp2Api's role chunk) are held back, so a failure after them can still be retried invisibly. Closing
        this generator closes the stream being opened: that is how a client that went away cancels it.
        """

        def attempt(provider: Provider, timeout: float) -> Waiting[OpenedStream]:
            self._for_member(provider, chat)
            timer = StreamTimer(first_byte=timeout, idle=provider.settings.idle_timeout)
            stream = provider.stream(chat, timer)
            held: list[Chunk] = []
            try:
                while True:
                    if not stream.ready(beat.left()):
                        if beat.passed():
                            yield
                        continue
                    chunks = stream.read()
                    if chunks is None:
                        break  # ended without content: nothing to retry for, the client gets what there was
                    held.extend(chunks)
                    if any(chunk.carries_content() for chunk in chunks):
                        break
                timer.commit()
                return OpenedStream(provider, stream, held)
            except BaseException:
                stream.close()
                raise

        return (yield from self._run(attempt, beat))[1]

    def failed_after_start(self, provider: Provider, error: GatewayError) -> None:
        """Count a failure that came after the stream started (it cannot be retried, but it is the provider's)."""
        if error.provider_fault and self.pool is None:  # a pool's outcome table: after content, nothing counts
            self._failure(provider, error)

    def _failure(self, provider: Provider, error: GatewayError) -> None:
        """Tell the breaker once per request: retries of one request are one failure, not several."""
        key = provider.breaker_key
        if key not in self._failed:
            self._failed.add(key)
            self.breaker.failure(key, error, new_request=self._count(key))

    def _for_member(self, provider: Provider, chat: ChatRequest) -> None:
        if self.pool is not None:
            self.pool.prepare(provider, chat)

    def _count(self, key: str) -> bool:
        """Return whether this is the request's first report for the circuit key (and note it)."""
        new = key not in self._counted
        self._counted.add(key)
        return new

    def _run(self, attempt: Callable[[Provider, float], Waiting[T]], beat: Beat) -> Waiting[tuple[Provider, T]]:
        last: GatewayError | None = None
        skipped = []
        for provider in self.plan:
            if not self.breaker.allow(provider.breaker_key) or (self.pool and self.pool.cooling(provider)):
                skipped.append(provider)
                continue
            for number in range(provider.max_retries + 1):
                timeout = min(provider.settings.first_byte_timeout, self.remaining())
                if timeout <= 0:
                    raise self._out_of_time(last)
                started = time.monotonic()
                self.last_provider, self.attempt_count = provider.name, self.attempt_count + 1
                try:
                    result = yield from attempt(provider, timeout)
                except GatewayError as error:
                    last = error
                    if self.pool is not None:
                        if not self._pool_failure(provider, error):
                            raise
                        break  # a pool moves to its next member, never back to the same bridge
                    if error.provider_fault:
                        self._failure(provider, error)
                    log.info("%s attempt %d failed: %s", provider.breaker_key, number + 1, error.code)
                    if not error.retryable or number == provider.max_retries:
                        break
                    delay = self.policy.delay(number, error.retry_after)
                    if delay is None or delay >= self.remaining():
                        break
                    yield from _sleep(delay, beat)
                    continue
                key = provider.breaker_key
                self.breaker.success(key, (time.monotonic() - started) * 1000, new_request=self._count(key))
                return provider, result
            if last is not None and not last.fallback:
                raise last
        if self.pool is not None and (paused := self.pool.exhausted(last)) is not None:
            raise paused
        if last is None:
            raise self._all_open(skipped)
        raise last

    def _pool_failure(self, provider: Provider, error: GatewayError) -> bool:
        """Apply a pool member's failure as the outcome table says; return whether the next member may be tried."""
        verdict = outcome(error)
        log.info("pool member %s failed: %s", provider.breaker_key, error.code)
        if verdict is not None and verdict.counts:
            self._failure(provider, error)
        return self.pool is not None and self.pool.failed(provider, verdict, error)

    def _out_of_time(self, last: GatewayError | None) -> GatewayError:
        detail = f" Last failure: {last.message}" if last else ""
        return UpstreamTimeout(
            f"No provider answered within the request budget of {self.budget:g} s.{detail}",
            code="request_budget_exceeded",
        )

    def _all_open(self, skipped: list[Provider]) -> GatewayError:
        waits = [w for p in skipped if (w := self.breaker.retry_in(p.breaker_key)) is not None]
        names = ", ".join(p.name for p in skipped)
        return UpstreamUnavailable(
            f"Every provider for this request is failing and paused (circuit open: {names}); retry shortly.",
            code="circuit_open",
            retry_after=min(waits) if waits else None,
        )


def _sleep(seconds: float, beat: Beat) -> Waiting[None]:
    """Wait seconds, yielding whenever a keep-alive falls due meanwhile."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(max(0.0, min(left, beat.left())))
        if beat.passed():
            yield
