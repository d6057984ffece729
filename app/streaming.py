"""Relay a provider stream to the client: unbuffered, with keep-alives, usage and clean errors."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import sse
from .errors import GatewayError
from .observe import StreamObserver
from .providers.base import ChatRequest, ChatStream, Chunk
from .providers.dispatch import Dispatcher
from .providers.http import ensure_gateway_error
from .providers.stream import carries_content
from .usage import estimate_tokens, prompt_tokens
from .workers import Workers

log = logging.getLogger(__name__)

OPENED, CHUNK, END, ERROR = "opened", "chunk", "end", "error"
Item = tuple[str, Any]

# Put waits in short slices so a reader whose client went away notices and exits.
_PUT_SLICE = 0.25
# The most frames joined into one write when many are waiting (a fast upstream, a slow client).
MAX_BATCH = 64


# Reused across streams: starting a thread per stream held the request ~0.5 ms (measured in bench/).
_pumps = Workers("stream-pump")


class StreamPump:
    """Read a provider stream on a background thread, so the response can wait for it with a timeout.

    Under Passenger a client that went away is only noticed when the response writes; reading the upstream
    here lets the response write keep-alives while a slow model thinks, and close the upstream at once. Retries
    and fallback to another provider happen here too, until the first content arrives.
    """

    def __init__(self, dispatcher: Dispatcher, chat: ChatRequest, maxsize: int = 64) -> None:
        self._queue: queue.Queue[Item] = queue.Queue(maxsize)
        self._dispatcher = dispatcher
        self._stop = dispatcher.stop
        self._lock = threading.Lock()
        self._stream: ChatStream | None = None
        _pumps.run(lambda: self._run(chat))

    def _run(self, chat: ChatRequest) -> None:
        opened = None
        try:
            opened = self._dispatcher.open_stream(chat, self._attach)
            # The chunks held back while waiting for content travel with the verdict: one hand-off, not several,
            # before the first content can be written.
            if self._stop.is_set() or not self._put((OPENED, (opened.provider.name, opened.held))):
                return
            for chunk in opened.rest:
                if not self._put((CHUNK, chunk)):
                    return
            self._put((END, None))
        except Exception as exc:  # providers raise GatewayError; anything else is logged as a bug
            error = ensure_gateway_error(exc, opened.provider.label if opened else "the upstream")
            if opened is not None:
                self._dispatcher.failed_after_start(opened.provider, error)
            if not self._stop.is_set():
                self._put((ERROR, error))
        finally:
            if opened is not None:
                opened.stream.close()

    def _attach(self, stream: ChatStream | None) -> None:
        with self._lock:
            self._stream = stream
        if stream is not None and self._stop.is_set():
            stream.abort()

    def _put(self, item: Item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_PUT_SLICE)
                if self._queue.qsize() == 1:
                    # The response thread was waiting for this; let it take the GIL now, or it waits until this
                    # thread blocks on the socket, after parsing whatever else the upstream has already sent.
                    time.sleep(0)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Item | None:
        """Return the next item, or None when nothing came within timeout."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_nowait(self) -> Item | None:
        """Return the next item if one is waiting, else None."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop reading (and retrying) and release the upstream connection; safe to call twice."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()


class ChunkRelay:
    """Turn upstream chunks into client frames: requested model name, a role chunk first, usage counted."""

    def __init__(self, request: ChatRequest, observer: StreamObserver | None = None) -> None:
        self.request, self.observer = request, observer
        self.error_code: str | None = None
        self.started = False
        self.completion_chars = 0
        self.upstream_usage: dict[str, Any] | None = None
        self.last_id = "chatcmpl-gateway"
        self.last_created = 0

    def take(self, item: Item, out: list[bytes]) -> bool:
        """Add the frames an item from the pump stands for to out; return whether the stream has ended."""
        kind, value = item
        if kind == CHUNK:
            observer = self.observer
            if observer is not None and observer.first_content is None and carries_content(value.obj):
                observer.content()
            out.extend(self.frames(value))
        elif kind == OPENED:
            provider, held = value
            if self.observer is not None:
                self.observer.opened(provider)
            for chunk in held:
                self.take((CHUNK, chunk), out)
        elif kind == ERROR:
            error: GatewayError = value
            self.error_code = error.code
            log.info("stream ended with error: %s", error.code)
            out.append(sse.json_frame(error.to_dict()))
            return True
        elif kind == END:
            if self.request.include_usage:
                out.append(self.usage_frame())
            return True
        return False

    def frames(self, chunk: Chunk) -> Iterator[bytes]:
        obj, text = chunk.obj, chunk.text
        choices = obj.get("choices")
        self.last_id = obj.get("id") or self.last_id
        self.last_created = obj.get("created") or self.last_created
        if isinstance(obj.get("usage"), dict):
            self.upstream_usage = obj["usage"]
            if not choices:
                return  # a usage-only chunk: sent once at the end, and only when asked for
        if not isinstance(choices, list):
            choices = []
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                for key in ("content", "reasoning_content"):
                    if isinstance(delta.get(key), str):
                        self.completion_chars += len(delta[key])
        if not self.started:
            self.started = True
            first_delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
            if not (isinstance(first_delta, dict) and "role" in first_delta):
                yield sse.json_frame(
                    self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                )
        if obj.get("model") != self.request.model:
            # Upstreams may report a cleaned model name; clients expect the id they asked for.
            obj["model"] = self.request.model
            text = json.dumps(obj, ensure_ascii=False)
        yield sse.frame(text)

    def usage(self) -> dict[str, Any]:
        """Return the upstream's usage, or an estimate when it reported none."""
        usage = self.upstream_usage
        if not usage or not usage.get("completion_tokens"):
            prompt = prompt_tokens(self.request.body.get("messages"))
            completion = estimate_tokens(self.completion_chars)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return usage

    def usage_frame(self) -> bytes:
        return sse.json_frame(self._chunk([], usage=self.usage()))

    def _chunk(self, choices: list, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.last_id,
            "object": "chat.completion.chunk",
            "created": self.last_created,
            "model": self.request.model,
            "choices": choices,
            **extra,
        }


def relay(
    pump: StreamPump, first: Item | None, request: ChatRequest, keepalive: float, observer: StreamObserver | None = None
) -> Iterator[bytes]:
    """Yield SSE frames as upstream chunks arrive, ending with `data: [DONE]` whatever happens.

    Chunks already waiting when one is written go out with it, in one write: never a wait, fewer writes (each costs
    the WSGI server a wake-up of its I/O thread).
    """
    chunks = ChunkRelay(request, observer)
    item = first
    batch: list[bytes] = []
    try:
        if first is None:
            # A whole interval has passed already while the view waited for the upstream's verdict.
            yield sse.KEEPALIVE
        while True:
            if item is None:
                item = pump.get(keepalive)
                if item is None:
                    # Also how a gone client is noticed under Passenger: the write fails.
                    yield sse.KEEPALIVE
                    continue
            batch = []
            ended = chunks.take(item, batch)
            while not ended and len(batch) < MAX_BATCH and (item := pump.get_nowait()) is not None:
                ended = chunks.take(item, batch)
            item = None
            if ended:
                break  # the last frames go out with [DONE]
            if batch:
                yield b"".join(batch)
                batch = []
    finally:
        pump.close()
        if observer is not None:
            # Recorded before [DONE] goes out: a client that reads its analytics right after finds the request.
            observer.finished(chunks.error_code, chunks.usage())
    yield b"".join((*batch, sse.DONE))
