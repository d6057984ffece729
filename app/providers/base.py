"""What every provider offers the gateway: chat, stream, models, health, close."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from .transport import MAX_UPSTREAM_BYTES, redact_url


@dataclass
class ChatRequest:
    """A validated OpenAI chat request; body keeps the client's unknown fields for the upstream.

    model is the name the client asked for, the one every answer reports; upstream_model, when set, is the name the
    upstream is asked for instead (a model alias). shaping, when set, is what the gateway enforces on the answer
    itself (an `app.shaping.Shaping`; typed loosely, as providers never look at it).
    """

    body: dict[str, Any]
    model: str
    stream: bool = False
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    upstream_model: str = ""
    shaping: Any = None

    def upstream_body(self, stream: bool) -> dict[str, Any]:
        """Return the body to forward, with `stream` explicit (upstreams default it differently)."""
        body = {k: v for k, v in self.body.items() if k != "stream_options"}
        body["stream"] = stream
        if self.upstream_model:
            body["model"] = self.upstream_model
        body.update(self.extra)
        return body


# What a client would show of a delta; a chunk with none of these (a role chunk) is not yet an answer.
_SHOWN = ("content", "reasoning_content", "tool_calls", "function_call", "refusal")


class Chunk(NamedTuple):
    """One `chat.completion.chunk`: its JSON text as received and the parsed object."""

    text: str
    obj: dict[str, Any]

    def carries_content(self) -> bool:
        """Return whether the chunk holds something a client would show (text, reasoning, tool calls or an end)."""
        for choice in self.obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                return True
            delta = choice.get("delta")
            if isinstance(delta, dict) and any(delta.get(k) for k in _SHOWN):
                return True
        return False


class ChatStream:
    """Chunks of one streamed completion, read in the caller's thread: wait with ready(), take with read().

    The caller never blocks longer than it asks to, so it can write keep-alives while it waits; close() when done
    (closing is also how a stream is cancelled: there is no other thread to tell).
    """

    def ready(self, timeout: float) -> bool:
        """Return whether read() has something, waiting at most timeout; raise GatewayError at a read deadline."""
        raise NotImplementedError

    def read(self) -> list[Chunk] | None:
        """Return the chunks that arrived (maybe none), or None once the stream has ended; raise GatewayError."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the upstream connection (kept for reuse when the stream ended cleanly)."""


@dataclass(frozen=True)
class ProviderSettings:
    """How to reach one upstream and how patient to be with it."""

    base_url: str
    api_key: str = ""
    first_byte_timeout: float = 180.0
    idle_timeout: float = 120.0
    connect_timeout: float = 5.0
    max_retries: int = 1
    models_cache_seconds: float = 30.0
    health_timeout: float = 2.0
    # The longest non-stream answer, or single stream event, read from the upstream.
    max_response_bytes: int = MAX_UPSTREAM_BYTES
    # PEM certificates trusted for an https:// upstream instead of certifi's public CAs ("" = certifi).
    ca_file: str = ""


class Provider:
    """An upstream that speaks (roughly) OpenAI; subclasses translate its errors into GatewayError."""

    name = "provider"
    label = "Provider"
    # The X-Provider header value that picks this provider.
    selector = "provider"
    # True when the upstream drives one browser tab (LMArenaBridge): a failure may pause it (the outcome table's
    # cooldown), and a generation that timed out may still be running there, so it is never asked twice for it.
    tab = False

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    @property
    def base_url(self) -> str:
        """Return the upstream's base URL as configured (may hold credentials: never show it)."""
        return self.settings.base_url

    @property
    def public_url(self) -> str:
        """Return the base URL without user info or query, safe to show and log."""
        return redact_url(self.settings.base_url)

    @cached_property
    def breaker_key(self) -> str:
        """Return the name of this upstream's circuit: one per upstream, so one dead upstream pauses no other."""
        return self.name

    @property
    def max_retries(self) -> int:
        """Return how many times a failed request may be sent again to this provider."""
        return self.settings.max_retries

    def chat(self, request: ChatRequest, timeout: float | None = None) -> dict[str, Any]:
        """Return a `chat.completion` object, waiting at most timeout (default first_byte_timeout) for it."""
        raise NotImplementedError

    def stream(self, request: ChatRequest, timer: Any) -> ChatStream:
        """Send a stream request whose reads obey timer; raise GatewayError when it cannot be sent."""
        raise NotImplementedError

    def models(self) -> list[dict[str, Any]]:
        """Return OpenAI model objects this provider serves; raise GatewayError when it cannot say."""
        raise NotImplementedError

    def models_version(self) -> tuple[int, ...] | None:
        """Return what changes whenever a list models() is built from is replaced (None: rebuild every time)."""
        return None

    def known_models(self) -> frozenset[str] | None:
        """Return the ids this provider serves, or None when it cannot say right now (never waits long)."""
        # perf: routing asks on every request, and building the set cost ~35 us with 50 models (bench/ profiles);
        # it is rebuilt only when a source list's version moves on.
        version = self.models_version()
        known = getattr(self, "_known_models", None)
        if version is not None and known is not None and known[0] == version:
            return known[1]
        try:
            ids = frozenset(m["id"] for m in self.models())
        except Exception:  # an unknown list routes like an unknown provider: it may still serve the model
            return None
        if version is not None:
            self._known_models = (version, ids)
        return ids

    def cached_models(self) -> frozenset[str] | None:
        """Return the ids known_models() last found, without asking the upstream (None before it has found any)."""
        known = getattr(self, "_known_models", None)
        return known[1] if known is not None else None

    def health(self) -> dict[str, Any]:
        """Return {"ok": bool, ...} from a quick, bounded look at the upstream."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Return what /health may show about this provider (never secrets)."""
        return {"name": self.name}

    def close(self) -> None:
        """Release pooled connections."""
