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
from .lmarena_bridge import bridge_url
from .pools import Outcome, PoolRequest, outcome, pause
from .transport import StreamTimer

log = logging.getLogger(__name__)

T = TypeVar("T")
# Less of the request budget than this left: no attempt is started, the budget is spent.
MIN_ATTEMPT = 0.05
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
    """One request's way through its candidate providers, each failure handled as the outcome table says.

    The table (`pools.OUTCOMES`, docs/RELIABILITY.md) says which failures count against a circuit, which pause a
    bridge, and whether the same bridge may be asked again; it holds for every request, in a pool or not.
    """

    plan: list[Provider]
    breaker: Breaker
    policy: RetryPolicy
    budget: float
    last_provider: str | None = None
    # The public URL of the LMArena bridge asked last (None for other providers), for the request's log line.
    last_bridge: str | None = None
    attempt_count: int = 0
    # A pool request: its members are the plan, and never is one asked twice.
    pool: PoolRequest | None = None
    # How long the outcome table pauses a bridge (GATEWAY_POOL_COOLDOWN_SECONDS), whatever sent the request.
    cooldown: float = 60.0
    deadline: float = field(init=False)
    started: float = field(init=False)
    # The last failure, and its row of the outcome table (None: the request's own fault).
    last: GatewayError | None = field(init=False, default=None)
    _verdict: Outcome | None = field(init=False, default=None)
    _lmarena_failures: int = field(init=False, default=0)
    # Circuits this request has reported to: a request counts once per circuit, however many attempts it made.
    _counted: set[str] = field(init=False, default_factory=set)
    _failed: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + self.budget

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

    def _for_member(self, provider: Provider, chat: ChatRequest) -> None:
        if self.pool is not None:
            self.pool.prepare(provider, chat)

    def _count(self, key: str) -> bool:
        """Return whether this is the request's first report for the circuit key (and note it)."""
        new = key not in self._counted
        self._counted.add(key)
        return new

    def _run(self, attempt: Callable[[Provider, float], Waiting[T]], beat: Beat) -> Waiting[tuple[Provider, T]]:
        shut: list[Provider] = []  # circuit open: probed when nothing else could be asked
        for provider in self._candidates():
            if self.pool is not None and self.pool.cooling(provider):
                continue  # paused since the plan was made; checked first, so no probe is claimed for nothing
            if not self.breaker.allow(provider.breaker_key):
                shut.append(provider)
                continue
            answer = yield from self._ask(provider, attempt, beat)
            if answer is not None:
                return answer
            if not self._moves_on():
                raise self._ending_error()
        if self.pool is not None and (paused := self.pool.exhausted(self.last)) is not None:
            raise paused
        if self.last is None:
            # Every candidate's circuit is open. Refusing for the whole cool-down would leave a recovered upstream
            # unused: one request at a time probes it instead, and the others are refused while it does.
            probe = next((p for p in shut if self.breaker.probe(p.breaker_key)), None)
            if probe is None:
                raise self._all_open(shut)
            answer = yield from self._ask(probe, attempt, beat)
            if answer is not None:
                return answer
        raise self._ending_error()

    def _candidates(self) -> list[Provider]:
        """Return the plan in the order to try it: outside a pool, a bridge in cooldown goes last, not away."""
        if self.pool is not None or len(self.plan) < 2:
            return self.plan
        return sorted(self.plan, key=lambda p: p.tab and self.breaker.cooldown_left(p.breaker_key) is not None)

    def _ask(
        self, provider: Provider, attempt: Callable[[Provider, float], Waiting[T]], beat: Beat
    ) -> Waiting[tuple[Provider, T] | None]:
        """Ask one provider, again while the outcome table allows; return (provider, result), or None if it failed."""
        for number in range(provider.max_retries + 1):
            if self.remaining() < MIN_ATTEMPT:
                raise self._out_of_time()
            timeout = min(provider.settings.first_byte_timeout, self.remaining())
            started = time.monotonic()
            self.last_provider, self.attempt_count = provider.name, self.attempt_count + 1
            self.last_bridge = bridge_url(provider.breaker_key)
            try:
                result = yield from attempt(provider, timeout)
            except GatewayError as error:
                log.info("%s attempt %d failed: %s", provider.breaker_key, number + 1, error.code)
                self.last, self._verdict = error, self._judge(provider, error)
                if not self._again(provider, number):
                    return None
                delay = self.policy.delay(number, error.retry_after)
                if delay is None or delay >= self.remaining():
                    return None
                yield from _sleep(delay, beat)
                continue
            key = provider.breaker_key
            self.breaker.success(key, (time.monotonic() - started) * 1000, new_request=self._count(key))
            return provider, result
        return None

    def _judge(self, provider: Provider, error: GatewayError) -> Outcome | None:
        """Apply the outcome table to a failure before content: the circuit, the bridge's cooldown; return the row."""
        verdict, key = outcome(error), provider.breaker_key
        if verdict is not None and verdict.counts:
            if key not in self._failed:  # told once per request: retries of one request are one failure
                self._failed.add(key)
                self.breaker.failure(key, error, new_request=self._count(key))
        else:
            # It answered: lmarena.ai's failure, or the request's, says the bridge itself is up.
            self.breaker.success(key, None, new_request=self._count(key))
        if verdict is not None:
            pause(self.breaker, provider, verdict, error, self.cooldown)
        return verdict

    def _again(self, provider: Provider, number: int) -> bool:
        """Return whether the provider that just failed may be asked again within this request."""
        verdict, error = self._verdict, self.last
        if self.pool is not None or verdict is None or error is None:
            return False  # a pool moves to its next member, never back to the same bridge
        if number >= provider.max_retries or not error.retryable:
            return False
        # A tab that got the request may be generating still, or has failed generating: never start a second one.
        return verdict.again or not provider.tab

    def _moves_on(self) -> bool:
        """Return whether the next candidate may be tried after the last one failed."""
        verdict, error = self._verdict, self.last
        if verdict is not None and verdict.once:
            self._lmarena_failures += 1
            if self._lmarena_failures > 1:
                return False
        if self.pool is not None:
            return verdict is not None
        return error is not None and error.fallback

    def _ending_error(self) -> GatewayError:
        """Return the error that ends the request: the last failure, or the spent budget it ran into."""
        return self.last if self.last is not None and self.remaining() >= MIN_ATTEMPT else self._out_of_time()

    def _out_of_time(self) -> GatewayError:
        waited = round(time.monotonic() - self.started, 1)
        attempts = f"{self.attempt_count} attempt{'' if self.attempt_count == 1 else 's'}"
        detail = f" Last failure: {self.last.message}" if self.last else ""
        return UpstreamTimeout(
            f"No provider answered within the request budget of {self.budget:g} s: waited {waited:g} s over "
            f"{attempts}.{detail}",
            code="request_budget_exceeded",
        )

    def _all_open(self, skipped: list[Provider]) -> GatewayError:
        waits = [w for p in skipped if (w := self.breaker.retry_in(p.breaker_key)) is not None]
        names = ", ".join(p.name for p in skipped)
        return UpstreamUnavailable(
            f"Every provider for this request is failing and being probed by another request (circuit open: "
            f"{names}); retry shortly.",
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
