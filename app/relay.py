"""Relay a provider stream to the client in the response's own thread: unbuffered, with keep-alives and clean errors.

The response generator itself waits for upstream bytes (poll on the socket, the keep-alive interval as the limit),
so nothing crosses threads; a client that goes away closes the generator, and its `finally` closes the upstream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from . import sse
from .errors import GatewayError
from .providers.base import ChatRequest, Chunk
from .providers.dispatch import Beat, Dispatcher, OpenedStream, Waiting
from .providers.upstream_errors import ensure_gateway_error
from .request_record import RequestRecord
from .shaping import Shaper
from .usage import fill_usage

log = logging.getLogger(__name__)


class Opening:
    """A stream being opened: the view starts it, and the response goes on with it if it takes longer."""

    def __init__(self, dispatcher: Dispatcher, chat: ChatRequest, keepalive: float) -> None:
        self.dispatcher, self.chat = dispatcher, chat
        self.beat = Beat(keepalive)
        self.steps: Waiting[OpenedStream] = dispatcher.open_stream(chat, self.beat)
        self.opened: OpenedStream | None = None

    def wait_one_interval(self) -> bool:
        """Work until the stream opens (True) or a keep-alive falls due (False); raise the failure of all attempts."""
        try:
            next(self.steps)
        except StopIteration as done:
            self.opened = done.value
            return True
        return False

    def close(self) -> None:
        """Close the stream, whether still opening (the generator's close() closes it) or open."""
        self.steps.close()
        opened, self.opened = self.opened, None  # closed once, however often this is called
        if opened is not None:
            opened.stream.close()


class ChunkRelay:
    """Turn upstream chunks into client frames: requested model name, a role chunk first, usage counted."""

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.started = False
        self.completion_chars = 0
        self.upstream_usage: dict[str, Any] | None = None
        self.last_id = "chatcmpl-gateway"
        self.last_created = 0
        # What the gateway enforces on the answer itself (stop, max_tokens, tools, JSON); None: chunks pass as they are.
        self.shaper: Shaper | None = request.shaping.start() if request.shaping is not None else None
        self.finished = False  # the shaped answer's finish chunk went out: later chunks bring nothing more
        self.cut = False  # no more upstream text is wanted: stop reading, drop the upstream

    def frames(self, chunk: Chunk, out: list[bytes]) -> None:
        """Add the frames a chunk stands for to out."""
        if self.shaper is not None:
            self._shaped(chunk, out)
            return
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
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                out.append(sse.json_frame(self._chunk([role])))
        if obj.get("model") != self.request.model:
            # Upstreams may report a cleaned model name; clients expect the id they asked for.
            obj["model"] = self.request.model
            text = json.dumps(obj, ensure_ascii=False)
        out.append(sse.frame(text))

    def end(self, out: list[bytes]) -> None:
        """Add what a shaped answer still holds, and its finish chunk, to out; raise GatewayError if it cannot stand."""
        if self.shaper is not None and not self.finished:
            self._finish(None, out)

    def _shaped(self, chunk: Chunk, out: list[bytes]) -> None:
        obj = chunk.obj
        self.last_id = obj.get("id") or self.last_id
        self.last_created = obj.get("created") or self.last_created
        if isinstance(obj.get("usage"), dict):
            self.upstream_usage = obj["usage"]
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None or self.finished:
            return
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        # Role and reasoning pass as they are; the content goes through the shaper.
        other = {k: v for k, v in delta.items() if k != "content" and v is not None}
        if isinstance(other.get("reasoning_content"), str):
            self.completion_chars += len(other["reasoning_content"])
        content = delta.get("content")
        deltas = self.shaper.feed(content) if isinstance(content, str) and content else []
        reason = choice.get("finish_reason")
        if not (reason or self.shaper.cut) and len(deltas) == 1 and deltas[0].get("content") == content:
            # perf: text the shaper lets through whole goes out in the upstream's own chunk, not a new one dumped
            # again: 6 us less per chunk (bench/shaping_bench.py).
            self._unchanged(chunk, delta, out)
            return
        if other:
            deltas = [{**other, **deltas[0]}, *deltas[1:]] if deltas else [other]
        self._deltas(deltas, None, out)
        if reason or self.shaper.cut:
            self._finish(reason, out)
            self.cut = self.shaper.cut

    def _unchanged(self, chunk: Chunk, delta: dict[str, Any], out: list[bytes]) -> None:
        obj, text = chunk.obj, chunk.text
        if not self.started:
            self.started = True
            if "role" not in delta:
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                out.append(sse.json_frame(self._chunk([role])))
        if obj.get("model") != self.request.model:
            obj["model"] = self.request.model
            text = json.dumps(obj, ensure_ascii=False)
        out.append(sse.frame(text))

    def _finish(self, upstream_reason: str | None, out: list[bytes]) -> None:
        self.finished = True
        deltas, reason = self.shaper.finish(upstream_reason)
        self._deltas(deltas, None, out)
        self._deltas([{}], reason, out)

    def _deltas(self, deltas: list[dict[str, Any]], reason: str | None, out: list[bytes]) -> None:
        if not self.started and deltas:
            self.started = True
            if "role" not in deltas[0]:
                deltas = [{"role": "assistant", "content": ""}, *deltas]
        for delta in deltas:
            out.append(sse.json_frame(self._chunk([{"index": 0, "delta": delta, "finish_reason": reason}])))

    def usage(self) -> dict[str, Any]:
        """Return the upstream's usage, completed with estimates where it reported none."""
        chars = self.completion_chars + (self.shaper.chars if self.shaper is not None else 0)
        if self.shaper is not None and self.upstream_usage is not None:
            # The upstream counted what it generated; the client is charged for what it was given.
            return fill_usage(
                {"prompt_tokens": self.upstream_usage.get("prompt_tokens")}, self.request.body.get("messages"), chars
            )
        return fill_usage(self.upstream_usage, self.request.body.get("messages"), chars)

    def usage_frame(self) -> bytes:
        """Return the usage chunk OpenAI sends last when stream_options.include_usage asks for it."""
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


def relay(opening: Opening, record: RequestRecord) -> Iterator[bytes]:
    """Yield SSE frames as upstream chunks arrive, ending with `data: [DONE]` whatever happens.

    Everything the upstream has sent when it is read goes out in one write: never a wait, fewer writes (each costs
    the WSGI server a wake-up of its I/O thread).
    """
    chunks = ChunkRelay(opening.chat)
    tail: list[bytes] = []
    batch: list[bytes] = []
    try:
        while opening.opened is None:
            # A whole interval has passed (in the view, or in the previous step) without a verdict.
            yield sse.KEEPALIVE
            opening.wait_one_interval()
        opened = opening.opened
        # The head went out already: the attempts reach the log line, not a header.
        record.served_by(opened.provider.name, opening.dispatcher.attempt_count, opening.dispatcher.last_bridge)
        stream, beat = opened.stream, opening.beat  # closed in finally, through opening
        for chunk in opened.held:
            chunks.frames(chunk, batch)
        while True:
            if chunks.cut:
                # The answer is complete (a stop sequence, max_tokens, a tool call): end the generation, unread.
                opening.close()
                break
            if batch:
                record.content()
                yield b"".join(batch)
                batch = []
                beat.restart()  # keep-alives fill silences only
            if not stream.ready(beat.left()):
                if beat.passed():
                    # Also how a gone client is noticed under Passenger: the write fails.
                    yield sse.KEEPALIVE
                continue
            read = stream.read()
            if read is None:
                break
            for chunk in read:
                chunks.frames(chunk, batch)
        chunks.end(batch)
        if batch:
            record.content()
            tail, batch = batch, []
        if opening.chat.include_usage:
            tail.append(chunks.usage_frame())
    except Exception as exc:  # providers raise GatewayError; anything else is logged as a bug
        error: GatewayError = ensure_gateway_error(exc, "the upstream")
        # After content, a failure counts against no circuit (the outcome table): nothing to tell the breaker.
        if opening.opened is None:
            # Who was asked last, as a refused JSON answer says.
            dispatcher = opening.dispatcher
            record.served_by(dispatcher.last_provider, dispatcher.attempt_count, dispatcher.last_bridge)
        record.error_code = error.code
        log.info("stream ended with error: %s", error.code)
        tail.extend(batch)  # what came before the failure in the same read still goes out first
        tail.append(sse.json_frame(error.to_dict()))
    except BaseException:
        # The client went away (GeneratorExit): drop the upstream at once; the stream is still recorded.
        opening.close()
        record.stream_finished(chunks.usage())
        raise
    # Recorded before [DONE] goes out: a client that reads its analytics right after finds the request.
    record.stream_finished(chunks.usage())
    try:
        yield b"".join((*tail, sse.DONE))
    finally:
        # After [DONE]: reading the end of the upstream's body (so its connection is reused) never delays it.
        opening.close()
