"""An OpenAI-style SSE chat stream read from an upstream, with errors translated at this boundary."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3

from .. import sse
from ..errors import GatewayError, UpstreamError, UpstreamTimeout
from .base import ChatStream, Chunk
from .exchange import READ_ERRORS, Exchange
from .transport import StreamTimer, read_error_body
from .upstream_errors import stream_broken, too_large, upstream_message


class SSEChatStream(ChatStream):
    """`data: {chat.completion.chunk}` frames until `data: [DONE]`; subclasses add their upstream's error habits.

    The request is already sent: the answer's head is read by the first read(), so a slow head is waited for
    with ready() like any slow chunk.
    """

    def __init__(
        self,
        exchange: Exchange,
        timer: StreamTimer,
        label: str,
        refuse: Callable[[int, Any, Any], GatewayError],
        max_event: int,
    ) -> None:
        # refuse(status, body, headers) translates an error answer: each provider knows its upstream's.
        self.exchange, self.timer, self.label, self.refuse = exchange, timer, label, refuse
        self.events = sse.EventReader(max_event)
        self.ended = False  # [DONE] or the end of the body came
        # Raised by the next read(), after the chunks that came before it have been taken.
        self.failure: GatewayError | None = None

    def ready(self, timeout: float) -> bool:
        if self.ended or self.failure is not None:
            return True
        wait = self.timer.read_timeout()
        if self.exchange.ready(min(timeout, wait)):
            return True
        if timeout < wait:
            return False
        if self.exchange.response is None:
            raise UpstreamTimeout(f"{self.label} did not answer within {self.timer.first_byte:g} s.")
        raise self.timer.expired(self.label)

    def read(self) -> list[Chunk] | None:
        if self.failure is not None:
            raise self.failure
        if self.ended:
            return None
        exchange = self.exchange
        if exchange.response is None:
            response = exchange.head(self.timer.read_timeout(), self.timer.first_byte)
            # Refusals come as plain JSON with an error status, even when a stream was asked for.
            if response.status != 200:
                raise self.refuse(response.status, read_error_body(response), response.headers)
            return []
        try:
            piece = exchange.read(self.timer.read_timeout())
        except urllib3.exceptions.ReadTimeoutError:
            raise self.timer.expired(self.label) from None
        except READ_ERRORS as exc:
            raise stream_broken(self.label, exc) from None
        if not piece:
            self.ended = True
            return None
        self.timer.touch()
        try:
            events = self.events.feed(piece)
        except sse.EventTooLarge:
            raise too_large(self.label, "a stream event", self.events.max_event) from None
        except UnicodeDecodeError:
            raise UpstreamError(
                f"{self.label} sent a stream that is not UTF-8 text.", code="upstream_bad_stream"
            ) from None
        chunks: list[Chunk] = []
        for data in events:
            if data == "[DONE]":
                self.ended = True
                break
            try:
                chunks.extend(self.inspect(self.parse(data)))
            except GatewayError as error:
                if not chunks:
                    raise
                self.failure = error
            if self.failure is not None:
                break
        return chunks

    def parse(self, data: str) -> Chunk:
        """Return the chunk an event's data holds; raise GatewayError for anything else."""
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply for Python's parser
            raise UpstreamError(
                f"{self.label} sent a stream chunk that is not JSON.", code="upstream_bad_stream"
            ) from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"{self.label} sent a stream chunk that is not an object.", code="upstream_bad_stream")
        if "error" in obj:
            raise self.error_chunk(obj)
        return Chunk(data, obj)

    def inspect(self, chunk: Chunk) -> list[Chunk]:
        """Return the chunk (or what it stands for); raise GatewayError when it is an error in disguise.

        An error that follows some text of its own is set as self.failure, and the text returned.
        """
        return [chunk]

    def error_chunk(self, obj: dict[str, Any]) -> GatewayError:
        """Translate a `data: {"error": ...}` frame."""
        return UpstreamError(f"{self.label} failed mid-stream: {upstream_message(obj)}", code="upstream_stream_error")

    def close(self) -> None:
        if self.ended and self.exchange.response is not None:
            # Read the body's end, so the connection goes back to the pool instead of the next stream opening one.
            self.exchange.finish()
        else:
            self.exchange.drop()

