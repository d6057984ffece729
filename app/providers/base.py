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


class Provider:
    """An upstream that speaks (roughly) OpenAI; subclasses translate its errors into GatewayError."""

    name = "provider"
    label = "Provider"

    def chat(self, request: ChatRequest) -> dict[str, Any]:
        """Return a `chat.completion` object."""
        raise NotImplementedError

    def stream(self, request: ChatRequest) -> ChatStream:
        """Open a stream; raise GatewayError when the upstream refuses it before the first chunk."""
        raise NotImplementedError

    def models(self) -> list[dict[str, Any]]:
        """Return OpenAI model objects this provider serves."""
        raise NotImplementedError

    def health(self) -> dict[str, Any]:
        """Return {"ok": bool, ...} from a quick, bounded look at the upstream."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Return what /health may show about this provider (never secrets)."""
        return {"name": self.name}

    def close(self) -> None:
        """Release pooled connections."""
