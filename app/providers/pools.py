"""Pools of sessions: which member bridges serve a pool request, in what order, and what a failure does to a member."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import GatewayError, RateLimitError, UpstreamUnavailable
from ..store.base import Session
from .base import ChatRequest, Provider
from .breaker import Breaker
from .lmarena_bridge import LMArenaBridge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one failure before the first content means, as docs/RELIABILITY.md's outcome table says."""

    counts: bool  # against the circuit of that bridge URL (of the provider, for yupp2Api)
    cooldown: bool  # the bridge is paused for GATEWAY_POOL_COOLDOWN_SECONDS (or the upstream's Retry-After)
    again: bool = False  # outside a pool, the same bridge may be asked again: the bridge itself failed
    once: bool = False  # only one more member (or provider) is tried after it


UNREACHABLE = Outcome(counts=True, cooldown=True, again=True)  # refused, reset before any byte, TLS
SILENT = Outcome(counts=True, cooldown=True)  # no byte before the first-byte timeout: the tab may still be generating
BRIDGE_FAILED = Outcome(counts=True, cooldown=False, again=True)  # the bridge's own 5xx, without lmarena.ai's marker
SESSION_SIDE = Outcome(counts=False, cooldown=True)  # no browser, waiting for refresh, rate limit, Cloudflare
LMARENA_FAILED = Outcome(counts=False, cooldown=False, once=True)  # any other [LMArena Bridge Error] before content

# The one table: error code (as the providers name each failure) -> outcome. A failure after content was sent is
# none of these: the client gets an error chunk, and nothing is retried, paused or counted.
OUTCOMES: dict[str, Outcome] = {
    "upstream_unreachable": UNREACHABLE,
    "upstream_tls_failed": UNREACHABLE,
    "upstream_connect_timeout": UNREACHABLE,
    "upstream_stream_broken": UNREACHABLE,
    "upstream_first_byte_timeout": SILENT,
    "upstream_timeout": SILENT,  # a JSON answer's head (or body) not in within the first-byte timeout
    "bridge_no_browser": SESSION_SIDE,
    "upstream_verification": SESSION_SIDE,
    "rate_limit_exceeded": SESSION_SIDE,
}


def outcome(error: GatewayError) -> Outcome | None:
    """Return what error means for its provider, or None when it is the request's fault (the client gets it)."""
    if error.from_lmarena:
        # lmarena.ai's words through the bridge: its rate limit and Cloudflare are the session's; the rest is
        # worth one more member (a time-out included: the bridge answered), and an attachment too large nowhere.
        if error.code in ("rate_limit_exceeded", "upstream_verification"):
            return SESSION_SIDE
        return LMARENA_FAILED if error.provider_fault else None
    known = OUTCOMES.get(error.code or "")
    if known is not None:
        return known
    return BRIDGE_FAILED if error.provider_fault else None


def pause(breaker: Breaker, bridge: Provider, verdict: Outcome, error: GatewayError, cooldown: float) -> None:
    """Pause a bridge (its tab) as the outcome table says: for cooldown, or the upstream's longer Retry-After.

    After a session-side failure the client is told, in the error's Retry-After, when the tab returns.
    """
    if not (verdict.cooldown and bridge.tab):
        return  # yupp2Api drives no tab: nothing to pause
    seconds = max(cooldown, error.retry_after or 0.0)
    breaker.cool_down(bridge.breaker_key, seconds, error)
    log.info("%s paused for %g s (%s)", bridge.public_url, seconds, error.code)
    if not verdict.counts:
        error.retry_after = seconds


class Member(NamedTuple):
    """A pool's session that accepts the request's model: the model name it is sent and its body fields."""

    session: Session
    model: str
    fields: dict[str, str]  # its LMArena ids (harmless to a bridge that ignores them), maybe a target_model_id


@dataclass
class PoolRequest:
    """One request's walk over a pool: its members' bridges in order, and what each is sent."""

    domain: str
    name: str
    members: list[LMArenaBridge]  # in the order to try, those in cooldown left out
    every: list[LMArenaBridge]  # every member, for the soonest return when all are out
    sends: dict[str, Member]  # by the bridge's circuit name
    breaker: Breaker

    def prepare(self, bridge: LMArenaBridge, chat: ChatRequest) -> None:
        """Set the model name and body fields chat carries to the member at bridge (each member's own map)."""
        member = self.sends[bridge.breaker_key]
        chat.upstream_model, chat.extra = member.model, dict(member.fields)

    def cooling(self, bridge: LMArenaBridge) -> bool:
        """Return whether the member was paused since the plan was made (another request, maybe another process)."""
        return self.breaker.cooldown_left(bridge.breaker_key) is not None

    def exhausted(self, last: GatewayError | None) -> GatewayError | None:
        """Return the 429 for a request that found every member paused (Retry-After: the soonest return), or None."""
        waits = [w for b in self.every if (w := self.breaker.cooldown_left(b.breaker_key)) is not None]
        if waits and len(waits) == len(self.every):
            detail = f" Last failure: {last.message}" if last else ""
            return RateLimitError(
                f"Every session in pool '{self.name}' on {self.domain} is paused; retry later.{detail}",
                code="pool_exhausted",
                retry_after=min(waits),
            )
        return None


def empty(domain: str, name: str) -> GatewayError:
    """Return the error for a pool without an active member."""
    return UpstreamUnavailable(
        f"Pool '{name}' on {domain} has no active session (one with a heartbeat within "
        "GATEWAY_SESSION_ACTIVE_SECONDS).",
        code="pool_empty",
    )


class Pools:
    """Round robin over each pool's members, per process (a counter per pool); cooldown: how long a member pauses."""

    def __init__(self, breaker: Breaker, cooldown: float) -> None:
        self.breaker, self.cooldown = breaker, cooldown
        self._turns: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def request(
        self,
        domain: str,
        name: str,
        accepting: Iterable[Member],
        bridge_for: Callable[[str | None, str | None], LMArenaBridge],
    ) -> PoolRequest:
        """Return the walk for one request: the members accepting its model, not in cooldown, from the next turn.

        :raise GatewayError: 503 pool_empty without an active member, 429 pool_exhausted when all are paused.
        """
        members: dict[str, LMArenaBridge] = {}
        sends: dict[str, Member] = {}
        for member in sorted(accepting, key=lambda m: m.session.session_name):
            bridge = bridge_for(member.session.bridge_base_url, member.session.bridge_api_key)
            # One bridge is one browser tab: two sessions on it are one member.
            if bridge.breaker_key not in members:
                members[bridge.breaker_key] = bridge
                sends[bridge.breaker_key] = member
        if not members:
            raise empty(domain, name)
        with self._lock:
            turn = next(self._turns.setdefault((domain, name), itertools.count()))
        ordered = list(members.values())
        start = turn % len(ordered)
        ordered = ordered[start:] + ordered[:start]
        ready = [b for b in ordered if self.breaker.cooldown_left(b.breaker_key) is None]
        walk = PoolRequest(domain, name, ready, ordered, sends, self.breaker)
        if not ready:
            raise walk.exhausted(None) or empty(domain, name)
        return walk
