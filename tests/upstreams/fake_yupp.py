"""Fake yupp2Api (Jasondeepny HEAD 6fed432) that answers byte for byte like tests/upstreams/captures/yupp_*.txt."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .fake_bridge import MARKER, last_user_text, split_words
from .httpserver import FakeUpstream, UpstreamHandler, compact_json
from .yupp_validation import validation_errors, wants_stream

# Ids as yupp.ai labels them, newline and emoji included, each with its publisher (owned_by).
DEFAULT_MODELS = {
    "GPT-4o-mini": "OpenAI",
    "GPT-4o\n\U0001f4ce": "OpenAI",
    "Claude Sonnet 4\n\u2600\ufe0f | \U0001f195": "Anthropic",
    "DeepSeek R1\n\U0001f9e0": "DeepSeek",
}
REASONING_MARK = "\U0001f9e0"  # the brain emoji yupp.ai puts on thinking models
DEFAULT_REPLY = "Hello from the real yupp"
DEFAULT_REASONING = "Thinking it over"

MISSING_KEY = "API key required in Authorization header."
WRONG_KEY = "Invalid client API key."
ALL_FAILED = "All attempts to contact Yupp.ai API failed."
NO_ACCOUNTS = "No valid Yupp.ai accounts available."
NO_MESSAGES = "No messages provided in the request."
BAD_BODY = "There was an error parsing the body"
BAD_REQUEST = '{"error": "Bad Request", "message": "Invalid model selection"}'
PREMATURE = "Response ended prematurely"
STREAM_HEADERS = (("cache-control", "no-cache"), ("connection", "keep-alive"), ("x-accel-buffering", "no"))
SLOW_CHUNKS = 200


@dataclass(frozen=True)
class Piece:
    """One thing fake yupp.ai sends after `delay`: reasoning or content text, the read error, or a dropped line."""

    kind: str
    text: str = ""
    delay: float = 0.0


def clean_model_name(model_id: str) -> str:
    """Return the name yupp2Api puts in stream chunks: whitespace to spaces, emoji and symbols dropped."""
    kept = re.sub(r"[^\w\s\-_().\/\[\]]+", "", re.sub(r"[\n\r\t\f\v]", " ", model_id))
    return re.sub(r"\s+", " ", kept).strip()


class FakeYupp(FakeUpstream):
    """yupp2Api look-alike: /v1/models, /models, /v1/chat/completions, account cooldown and fault markers.

    Settable at any time: models ({id: owned_by}), api_key (None: no auth), reply, reasoning (streamed first for
    ids with the brain emoji), chunk_delay, response_delay (yupp.ai's time to answer), hang_seconds,
    cooldown_failures, cooldown_seconds, headers_delay, first_chunk_delay. Markers in the last user message:
    [[fake:error]], midfail, hang, badrequest, empty (as captured) and drop, garbage, slow, status:NNN.
    Failures (`error`, and midfail/hang when not streamed) put the one account in cooldown like the real server:
    see `failures`, `cooling_down`, `reset_cooldown()`. Scripted steps come from FakeUpstream.script().
    """

    server_header = "uvicorn"

    def __init__(
        self,
        *,
        models: dict[str, str] | None = None,
        api_key: str | None = "sk-yupp-test",
        reply: str = DEFAULT_REPLY,
        reasoning: str = DEFAULT_REASONING,
        chunk_delay: float = 0.2,
        response_delay: float = 0.05,
        hang_seconds: float = 3.0,
        cooldown_failures: int = 3,
        cooldown_seconds: float = 300.0,
    ) -> None:
        super().__init__()
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.api_key = api_key
        self.reply = reply
        self.reasoning = reasoning
        self.chunk_delay = chunk_delay
        self.response_delay = response_delay
        self.hang_seconds = hang_seconds
        self.cooldown_failures = cooldown_failures
        self.cooldown_seconds = cooldown_seconds
        self.headers_delay = 0.0
        self.first_chunk_delay = 0.0
        # One yupp.ai account, like the captured server: its error count and when it was last picked.
        self._failures = 0
        self._last_used = -math.inf
        self._account_lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Return the account's error count (yupp2Api never lowers it on success, only after a cooldown)."""
        with self._account_lock:
            return self._failures

    @property
    def cooling_down(self) -> bool:
        """Return whether chat requests now get 503 "No valid Yupp.ai accounts available."."""
        with self._account_lock:
            return self._cooling_down(time.monotonic())

    def reset_cooldown(self) -> None:
        """Forget every failure, ending any cooldown."""
        with self._account_lock:
            self._failures = 0
            self._last_used = -math.inf

    def _cooling_down(self, now: float) -> bool:
        return self._failures >= self.cooldown_failures and now - self._last_used <= self.cooldown_seconds

    def _pick_account(self) -> bool:
        """Pick the account like yupp2Api: refused while cooling down, error count cleared once cooldown ended."""
        with self._account_lock:
            now = time.monotonic()
            if self._cooling_down(now):
                return False
            if self._failures >= self.cooldown_failures:
                self._failures = 0
            self._last_used = now
            return True

    def _fail(self, h: UpstreamHandler) -> None:
        with self._account_lock:
            self._failures += 1
        h.send_json(503, {"detail": ALL_FAILED})

    def handle(self, h: UpstreamHandler) -> None:
        """Route like the FastAPI app: unknown path 404, wrong method 405."""
        h.wait(self.headers_delay)
        routes = {
            "/v1/models": ("GET", self._models),
            "/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._chat),
        }
        route = routes.get(h.route_path)
        if route is None:
            h.send_json(404, {"detail": "Not Found"})
        elif h.command != route[0]:
            h.send_json(405, {"detail": "Method Not Allowed"}, headers=[("allow", route[0])])
        else:
            route[1](h)

    def _authorised(self, h: UpstreamHandler) -> bool:
        """Check the key like FastAPI's HTTPBearer(auto_error=False); answer 401/403 and return False if bad."""
        if not self.api_key:
            return True
        scheme, _, credentials = (h.headers.get("Authorization") or "").partition(" ")
        if not scheme or not credentials or scheme.lower() != "bearer":
            h.send_json(401, {"detail": MISSING_KEY}, headers=[("www-authenticate", "Bearer")])
            return False
        if credentials != self.api_key:
            h.send_json(403, {"detail": WRONG_KEY})
            return False
        return True

    def _models(self, h: UpstreamHandler) -> None:
        # Model listing never looks at the yupp.ai account, so it keeps answering during a cooldown.
        if h.route_path == "/models" or self._authorised(h):
            now = int(time.time())
            data = [{"id": mid, "object": "model", "created": now, "owned_by": by} for mid, by in self.models.items()]
            h.send_json(200, {"object": "list", "data": data})

    def _decode_body(self, h: UpstreamHandler) -> tuple[bool, Any]:
        """Decode the body as FastAPI does before any dependency runs; answer 422/400 and return False if it can't."""
        raw = h.record.body
        if not raw:
            return True, None
        content_type = h.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            return True, raw.decode(errors="replace")  # FastAPI validates the raw text, which then fails
        try:
            return True, json.loads(raw)
        except json.JSONDecodeError as exc:
            error = {"type": "json_invalid", "loc": ["body", exc.pos], "msg": "JSON decode error", "input": {}}
            h.send_json(422, {"detail": [{**error, "ctx": {"error": exc.msg}}]})
        except UnicodeDecodeError:
            h.send_json(400, {"detail": BAD_BODY})
        return False, None

    def _chat(self, h: UpstreamHandler) -> None:
        # Same order as the real endpoint: body decoding, key, validation, model, messages, account, yupp.ai.
        ok, body = self._decode_body(h)
        if not ok or not self._authorised(h):
            return
        errors = validation_errors(body)
        if errors:
            h.send_json(422, {"detail": errors})
            return
        model = body["model"]
        if model not in self.models:
            h.send_json(404, {"detail": f"Model '{model}' not found."})
        elif not body["messages"]:
            h.send_json(400, {"detail": NO_MESSAGES})
        elif not self._pick_account():
            h.send_json(503, {"detail": NO_ACCOUNTS})
        else:
            found = MARKER.search(last_user_text(body["messages"]))
            self._answer(h, model, found.group(1) if found else "", wants_stream(body.get("stream", True)))

    def _answer(self, h: UpstreamHandler, model: str, marker: str, stream: bool) -> None:
        """Play fake yupp.ai's part: the marker decides what it sends, stream or not how it reaches the client."""
        if marker.startswith("status:"):
            code = int(marker[len("status:") :])
            h.send_json(code, {"detail": f"fake status {code}"})
            return
        h.wait(self.response_delay)
        if marker == "error":
            self._fail(h)
        elif marker == "badrequest":
            h.send_json(400, {"detail": BAD_REQUEST})
        elif marker == "garbage":
            self._garbage(h, stream)
        elif stream:
            self._stream(h, clean_model_name(model), self._pieces(marker, model))
        else:
            self._complete(h, model, self._pieces(marker, model))

    def _pieces(self, marker: str, model: str) -> list[Piece]:
        """Return what fake yupp.ai sends for this marker, each piece with the delay before it."""
        delay = self.chunk_delay
        thinks = REASONING_MARK in model
        thoughts = [Piece("reasoning", word, delay) for word in split_words(self.reasoning)] if thinks else []
        words = [*thoughts, *(Piece("content", word, delay) for word in split_words(self.reply))]
        if marker == "midfail":
            return [*words[:2], Piece("error", PREMATURE, delay)]
        if marker == "hang":
            return [Piece("error", PREMATURE, delay + self.hang_seconds)]
        if marker == "drop":
            return [*words[:2], Piece("drop", delay=delay)]
        if marker == "empty":
            return []
        if marker == "slow":
            return [Piece("content", " tick", delay)] * SLOW_CHUNKS
        return words

    def _stream(self, h: UpstreamHandler, name: str, pieces: list[Piece]) -> None:
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        h.start_stream(headers=STREAM_HEADERS)
        h.wait(self.first_chunk_delay)
        h.write_chunk(self._chunk(response_id, created, name, {"role": "assistant"}))
        for piece in pieces:
            h.wait(piece.delay)
            if piece.kind == "drop":
                h.drop_connection()
            if piece.kind == "error":
                # yupp2Api reports a broken yupp.ai stream with plain json.dumps, spaces and all, then ends normally.
                h.write_chunk(f"data: {json.dumps({'error': piece.text})}\n\n".encode())
                break
            key = "reasoning_content" if piece.kind == "reasoning" else "content"
            h.write_chunk(self._chunk(response_id, created, name, {key: piece.text}))
        h.write_chunk(self._chunk(response_id, created, name, {}, "stop"))
        h.write_chunk(b"data: [DONE]\n\n")
        h.end_stream()

    @staticmethod
    def _chunk(response_id: str, created: int, name: str, delta: dict[str, str], finish: str | None = None) -> bytes:
        choices = [{"delta": delta, "index": 0, "finish_reason": finish}]
        chunk = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": name}
        return b"data: " + compact_json({**chunk, "choices": choices}) + b"\n\n"

    def _complete(self, h: UpstreamHandler, model: str, pieces: list[Piece]) -> None:
        # yupp2Api reads the whole yupp.ai stream first; a broken one ends in its catch-all, which counts a failure.
        h.wait(sum(piece.delay for piece in pieces))
        kinds = {piece.kind for piece in pieces}
        if "error" in kinds:
            self._fail(h)
            return
        content = "".join(piece.text for piece in pieces if piece.kind == "content")
        reasoning = "".join(piece.text for piece in pieces if piece.kind == "reasoning")
        message = {"role": "assistant", "content": content, "reasoning_content": reasoning or None}
        body = compact_json(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"message": message, "index": 0, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        )
        if "drop" in kinds:
            h.send_head(200, [("content-length", str(len(body))), ("content-type", "application/json")])
            h.write(body[: len(body) // 2])
            h.drop_connection()
        h.send_json(200, body)

    def _garbage(self, h: UpstreamHandler, stream: bool) -> None:
        if not stream:
            h.send_json(200, b"{not json")
            return
        h.start_stream(headers=STREAM_HEADERS)
        h.wait(self.chunk_delay + self.first_chunk_delay)
        h.write_chunk(b"data: {not json\n\n")
        h.write_chunk(b"data: [DONE]\n\n")
        h.end_stream()
