"""An OpenAI-style SSE chat stream read from an upstream, with errors translated at this boundary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..errors import GatewayError, UpstreamError
from .base import ChatStream, Chunk
from .http import Response, StreamTimer, UpstreamClient, finish, release, upstream_message


def carries_content(obj: dict[str, Any]) -> bool:
    """Return whether a chunk holds something a client would show (text, reasoning, tool calls or an end)."""
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(
            delta.get(k) for k in ("content", "reasoning_content", "tool_calls", "function_call", "refusal")
        ):
            return True
    return False


class SSEChatStream(ChatStream):
    """`data: {chat.completion.chunk}` frames until `data: [DONE]`; subclasses add their upstream's error habits."""

    def __init__(self, client: UpstreamClient, response: Response, timer: StreamTimer) -> None:
        self.client, self.response, self.timer = client, response, timer
        self._aborted = False
        self._done = False  # [DONE] came: the connection may be reused, so abort() must leave it alone

    def __iter__(self) -> Iterator[Chunk]:
        label = self.client.label
        for data in self.client.sse_data(self.response, self.timer, lambda: self._aborted):
            if data == "[DONE]":
                self._done = True
                return
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: nested too deeply for Python's parser
                raise UpstreamError(
                    f"{label} sent a stream chunk that is not JSON.", code="upstream_bad_stream"
                ) from None
            if not isinstance(obj, dict):
                raise UpstreamError(f"{label} sent a stream chunk that is not an object.", code="upstream_bad_stream")
            if "error" in obj:
                raise self.error_chunk(obj)
            yield from self.inspect(Chunk(data, obj))

    def inspect(self, chunk: Chunk) -> Iterator[Chunk]:
        """Yield the chunk (or what it stands for); raise GatewayError when it is an error in disguise."""
        yield chunk

    def error_chunk(self, obj: dict[str, Any]) -> GatewayError:
        """Translate a `data: {"error": ...}` frame."""
        return UpstreamError(
            f"{self.client.label} failed mid-stream: {upstream_message(obj)}", code="upstream_stream_error"
        )

    def abort(self) -> None:
        if self._done:
            return  # nothing is blocked on it, and its socket may already serve another request from the pool
        self._aborted = True
        try:
            self.response.shutdown()
        except (AttributeError, ValueError, RuntimeError, OSError):
            pass  # already closed or released: nothing is blocked on it

    def close(self) -> None:
        # Without reading the body's end, close() would drop the connection and the next stream open a new one.
        if self._done:
            finish(self.response)
        release(self.response)
