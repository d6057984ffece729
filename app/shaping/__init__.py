"""Reshape what the model says before the client sees it: stop sequences and token limits.

LMArenaBridge and yupp2Api ignore them, so the gateway honours them itself. A JSON answer's content is fed to a
`Shaper` whole, a stream's piece by piece: feed() returns the deltas that may go out now (holding back only what a
stage has yet to decide), finish() the rest and the finish reason, or raises GatewayError (in a stream, an error
chunk). `cut` says no more upstream text is wanted: the relay then stops reading and drops the upstream, so a stop
sequence ends the generation instead of waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .limits import Limits, read_limits


@dataclass(frozen=True)
class Shaping:
    """What a request asks the gateway to enforce on the answer; start() gives an answer its own Shaper."""

    stops: tuple[str, ...] = ()
    max_chars: int | None = None

    def start(self) -> Shaper:
        """Return a Shaper for one answer."""
        return Shaper(self)

    @property
    def shapes_answer(self) -> bool:
        """Return whether answers need a Shaper."""
        return bool(self.stops or self.max_chars)


def read_shaping(body: dict[str, Any]) -> Shaping | None:
    """Return what a validated body asks the gateway to honour, or None for a request relayed as it is."""
    stops, max_chars = read_limits(body)
    if not (stops or max_chars):
        return None
    return Shaping(stops, max_chars)


def shape_completion(data: dict[str, Any], shaper: Shaper) -> int:
    """Reshape a `chat.completion`'s answer in place; return the characters of the model's text it kept."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if choice is None:
        choice = {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
        data["choices"] = [choice]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    shaped, choice["finish_reason"] = shaper.complete(content, choice.get("finish_reason"))
    choice["message"] = {**message, **shaped}
    reasoning = message.get("reasoning_content")
    return shaper.chars + (len(reasoning) if isinstance(reasoning, str) else 0)


class Shaper:
    """One answer on its way to the client, through the stages its request asks for."""

    def __init__(self, shaping: Shaping) -> None:
        self.limits = Limits(shaping.stops, shaping.max_chars)
        self.chars = 0  # the model's text kept (what `usage` counts)
        self.cut = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Return the deltas that may go out now that text came."""
        text = self.limits.feed(text)
        self.cut = self.limits.reason is not None
        return self._shape(text)

    def finish(self, upstream_reason: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Return the last deltas and the finish reason."""
        deltas = self._shape(self.limits.finish())
        return deltas, self.limits.reason or upstream_reason or "stop"

    def complete(self, content: str, upstream_reason: str | None) -> tuple[dict[str, Any], str]:
        """Return the message and finish reason of a whole answer."""
        deltas = self.feed(content)
        more, reason = self.finish(upstream_reason)
        return {"role": "assistant", "content": "".join(d["content"] for d in (*deltas, *more))}, reason

    def _shape(self, text: str) -> list[dict[str, Any]]:
        self.chars += len(text)
        return [{"content": text}] if text else []
