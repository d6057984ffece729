"""What every provider offers the gateway: chat, stream, models, health, close."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass
class ChatRequest:
    """A validated OpenAI chat request; body keeps the client's unknown fields for the upstream."""

    body: dict[str, Any]
    model: str
    stream: bool = False
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def upstream_body(self, stream: bool) -> dict[str, Any]:
        """Return the body to forward, with `stream` explicit (upstreams default it differently)."""
        body = {k: v for k, v in self.body.items() if k != "stream_options"}
        body["stream"] = stream
        body.update(self.extra)
        return body


class Chunk(NamedTuple):
    """One `chat.completion.chunk`: its JSON text as received and the parsed object."""

    text: str
    obj: dict[str, Any]


class ChatStream:
    """Chunks of one streamed completion; iterate it once, then close()."""

    def __iter__(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def abort(self) -> None:
        """Make a read blocked in another thread return at once; safe to call from any thread."""

    def close(self) -> None:
        """Release the upstream connection."""


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
    max_response_bytes: int = 32 * 1024 * 1024
    # PEM certificates trusted for an https:// upstream instead of certifi's public CAs ("" = certifi).
    ca_file: str = ""


class Provider:
    """An upstream that speaks (roughly) OpenAI; subclasses translate its errors into GatewayError."""

    name = "provider"
    label = "Provider"
    # The X-Provider header value that picks this provider.
    selector = "provider"

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    @property
    def max_retries(self) -> int:
        return self.settings.max_retries

    def chat(self, request: ChatRequest, timeout: float | None = None) -> dict[str, Any]:
        """Return a `chat.completion` object, waiting at most timeout (default first_byte_timeout) for it."""
        raise NotImplementedError

    def stream(self, request: ChatRequest, timer: Any) -> ChatStream:
        """Open a stream whose reads obey timer; raise GatewayError when the upstream refuses it."""
        raise NotImplementedError

    def models(self) -> list[dict[str, Any]]:
        """Return OpenAI model objects this provider serves; raise GatewayError when it cannot say."""
        raise NotImplementedError

    def model_sources(self) -> tuple | None:
        """Return the cached objects models() is built from, so known_models() can reuse its set (None: don't)."""
        return None

    def known_models(self) -> frozenset[str] | None:
        """Return the ids this provider serves, or None when it cannot say right now (never waits long)."""
        # Routing asks on every request: rebuild the set only when a source list was replaced (refreshed).
        sources = self.model_sources()
        known = getattr(self, "_known_models", None)
        if sources is not None and known is not None and all(a is b for a, b in zip(known[0], sources, strict=True)):
            return known[1]
        try:
            ids = frozenset(m["id"] for m in self.models())
        except Exception:  # an unknown list routes like an unknown provider: it may still serve the model
            return None
        if sources is not None:
            self._known_models = (sources, ids)
        return ids

    def health(self) -> dict[str, Any]:
        """Return {"ok": bool, ...} from a quick, bounded look at the upstream."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Return what /health may show about this provider (never secrets)."""
        return {"name": self.name}

    def close(self) -> None:
        """Release pooled connections."""
