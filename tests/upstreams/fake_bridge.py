"""Fake LMArenaBridge (HEAD a5d087b) that answers byte for byte like tests/upstreams/captures/lmab_*.txt."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .httpserver import FakeUpstream, UpstreamHandler

DEFAULT_MODELS = {
    "gemini-2.5-pro": "e2d9d353-6dbe-4414-bf87-bd289d523726",
    "gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086",
    "claude-opus-4-1-20250805": "96ae95fd-b70d-49c3-91cc-b58c7da1090b",
    "nano-banana": "null:image",
}
DEFAULT_REPLY = "Hello from the real bridge"

MISSING_KEY = "未提供 API Key。请在 Authorization 头部中以 'Bearer YOUR_KEY' 格式提供。"
WRONG_KEY = "提供的 API Key 不正确。"
BAD_JSON = "无效的 JSON 请求体"
NO_BROWSER = "油猴脚本客户端未连接。请确保 LMArena 页面已打开并激活脚本。"
WAITING_FOR_REFRESH = "正在等待浏览器刷新以完成人机验证，请在几秒钟后重试。"
NO_MODELS = "模型列表为空或 'models.json' 未找到。"
RATE_LIMITED = '网络响应不正常。状态: 429. 内容: {"error":"Too Many Requests"}'
CLOUDFLARE = "检测到人机验证，已发送刷新指令，请稍后重试。"
TOO_LARGE = "上传失败：附件大小超过了 LMArena 服务器的限制 (通常是 5MB左右)。请尝试压缩文件或上传更小的文件。"
NETWORK_ERROR = "network error"
BROWSER_GONE = "Browser disconnected during operation"
IMAGE_URL = "https://fake-lmarena.invalid/generated/fake-image-{:04d}.png"

MARKER = re.compile(r"\[\[fake:([a-z]+|status:[1-5]\d\d)\]\]")
ERROR_MARKERS = {"error": RATE_LIMITED, "cloudflare": CLOUDFLARE, "toolarge": TOO_LARGE}
SLOW_CHUNKS = 200


@dataclass(frozen=True)
class Step:
    """One thing the fake browser sends back: content, an error, the finish signal or a dropped connection."""

    kind: str
    text: str = ""
    delay: float = 0.0


def last_user_text(messages: Any) -> str:
    """Return the text of the last user message (string content or its text parts)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(
                    part["text"]
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                )
            return content if isinstance(content, str) else ""
    return ""


def split_words(text: str) -> list[str]:
    """Split a reply the way the captured browser sent it: "Hello", " from", " the", ..."""
    return re.findall(r"\s*\S+|\s+", text)


class FakeBridge(FakeUpstream):
    """LMArenaBridge look-alike: /v1/models, /v1/chat/completions, state flags and fault markers.

    Settable at any time: no_browser, waiting_for_refresh, headers_delay, first_chunk_delay, models_status,
    models, reply, chunk_delay, response_delay, hang_seconds, and marker (a marker for every chat whose message has
    none: one tab rate-limited or facing Cloudflare, while another runs); model, a test's own model: a function of
    the request body that returns the reply (in place of `reply`), to answer what the gateway instructed.
    Markers in the last user message: [[fake:error]], midfail, hang, disconnect, cloudflare, image, toolarge (as
    captured) and drop, garbage, slow, status:NNN.
    """

    server_header = "uvicorn"
    extra_headers = (("vary", "Origin"),)

    def __init__(
        self,
        *,
        models: dict[str, str] | None = None,
        api_key: str | None = "sk-lmab-test",
        reply: str = DEFAULT_REPLY,
        chunk_delay: float = 0.2,
        response_delay: float = 0.05,
        hang_seconds: float = 3.0,
    ) -> None:
        super().__init__()
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.api_key = api_key
        self.reply = reply
        self.chunk_delay = chunk_delay
        self.response_delay = response_delay
        self.hang_seconds = hang_seconds
        self.no_browser = False
        self.waiting_for_refresh = False
        self.headers_delay = 0.0
        self.first_chunk_delay = 0.0
        self.models_status: int | None = None
        self.marker = ""
        self.model: Callable[[dict[str, Any]], str] | None = None
        # Where generated images "live": a format string taking the image number (tests point it at loopback).
        self.image_url = IMAGE_URL
        self._images = 0
        self._image_lock = threading.Lock()

    def handle(self, h: UpstreamHandler) -> None:
        """Route like the FastAPI app: unknown path 404, wrong method 405."""
        h.wait(self.headers_delay)
        routes = {"/v1/models": ("GET", self._models), "/v1/chat/completions": ("POST", self._chat)}
        route = routes.get(h.route_path)
        if route is None:
            h.send_json(404, {"detail": "Not Found"})
        elif h.command != route[0]:
            h.send_json(405, {"detail": "Method Not Allowed"}, headers=[("allow", route[0])])
        else:
            route[1](h)

    def _models(self, h: UpstreamHandler) -> None:
        status = self.models_status
        if status == 404 or (status is None and not self.models):
            h.send_json(404, {"error": NO_MODELS})
        elif status is not None and status != 200:
            h.send_json(status, {"detail": f"fake status {status}"})
        else:
            now = int(time.time())
            data = [
                {"id": name, "object": "model", "created": now, "owned_by": "LMArenaBridge"} for name in self.models
            ]
            h.send_json(200, {"object": "list", "data": data})

    def _chat(self, h: UpstreamHandler) -> None:
        # Same order of checks as the real endpoint: JSON, key, browser state, then the (fake) browser's answer.
        try:
            payload = json.loads(h.record.body)
        except json.JSONDecodeError:
            h.send_json(400, {"detail": BAD_JSON})
            return
        if not isinstance(payload, dict):
            # The real endpoint calls .get() on it before the key check, and uvicorn answers a bare 500.
            h.send_body(500, b"Internal Server Error", "text/plain; charset=utf-8")
            return
        if self.api_key:
            auth = h.headers.get("Authorization")
            if not auth or not auth.startswith("Bearer "):
                h.send_json(401, {"detail": MISSING_KEY})
                return
            if auth.split(" ")[1] != self.api_key:
                h.send_json(401, {"detail": WRONG_KEY})
                return
        if self.waiting_for_refresh or self.no_browser:
            h.send_json(503, {"detail": WAITING_FOR_REFRESH if self.waiting_for_refresh else NO_BROWSER})
            return
        model = payload.get("model")
        name = model or "default_model"
        found = MARKER.search(last_user_text(payload.get("messages")))
        marker = found.group(1) if found else self.marker
        stream = bool(payload.get("stream", False))  # omitted means non-stream on this upstream
        if marker.startswith("status:"):
            code = int(marker[len("status:") :])
            h.send_json(code, {"detail": f"fake status {code}"})
        elif marker == "garbage":
            self._garbage(h, stream)
        else:
            is_image = str(self.models.get(model, "") if isinstance(model, str) else "").endswith(":image")
            reply = self.model(payload) if self.model is not None else self.reply
            steps = self._script(marker, is_image, reply)
            if stream:
                self._stream(h, name, steps)
            else:
                self._complete(h, name, steps, marker)

    def _script(self, marker: str, is_image: bool, reply: str) -> list[Step]:
        """Return what the fake browser sends for this marker, each step with the delay before it."""
        delay = self.chunk_delay
        words = [Step("content", word, delay) for word in split_words(reply)]
        if marker in ERROR_MARKERS:
            return [Step("error", ERROR_MARKERS[marker], delay)]
        if marker == "disconnect":
            return [Step("error", BROWSER_GONE)]
        if marker == "hang":
            return [Step("error", f"Response timed out after {int(self.hang_seconds)} seconds.", self.hang_seconds)]
        if marker == "midfail":
            return [*words[:2], Step("error", NETWORK_ERROR, delay)]
        if marker == "drop":
            return [*words[:2], Step("drop", delay=delay)]
        if marker == "slow":
            return [Step("content", " tick", delay)] * SLOW_CHUNKS + [Step("finish", delay=delay)]
        if marker == "image" or is_image:
            # The captured browser sends an image and its finish signal together.
            return [Step("content", f"![Image]({self._next_image_url()})", delay), Step("finish")]
        return [*words, Step("finish", delay=delay)]

    def _next_image_url(self) -> str:
        with self._image_lock:
            self._images += 1
            return self.image_url.format(self._images)

    def _stream(self, h: UpstreamHandler, model: str, steps: list[Step]) -> None:
        response_id = f"chatcmpl-{uuid.uuid4()}"
        h.start_stream()
        extra = self.first_chunk_delay
        for step in steps:
            h.wait(step.delay + extra)
            extra = 0.0
            if step.kind == "content":
                h.write_chunk(self._chunk(response_id, model, {"content": step.text}))
                continue
            if step.kind == "drop":
                h.drop_connection()
            if step.kind == "error":
                error = {"content": f"\n\n[LMArena Bridge Error]: {step.text}"}
                h.write_chunk(self._chunk(response_id, model, error))
            # The real bridge yields the stop chunk and [DONE] as one piece, so they share one HTTP chunk.
            h.write_chunk(self._chunk(response_id, model, {}, "stop") + b"data: [DONE]\n\n")
            h.end_stream()
            return
        h.end_stream()

    @staticmethod
    def _chunk(response_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        chunk = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    def _complete(self, h: UpstreamHandler, model: str, steps: list[Step], marker: str) -> None:
        if marker == "hang":
            h.wait(self.hang_seconds)
        elif steps[0].delay:
            h.wait(self.response_delay)
        parts: list[str] = []
        for step in steps:
            if step.kind == "content":
                parts.append(step.text)
            elif step.kind == "error":
                status = 413 if "附件大小超过了" in step.text else 500
                code = "attachment_too_large" if status == 413 else "processing_error"
                error = {"message": f"[LMArena Bridge Error]: {step.text}", "type": "bridge_error", "code": code}
                h.send_json(status, json.dumps({"error": error}, ensure_ascii=False))
                return
            elif step.kind == "drop":
                body = self._completion_body(model, "".join(parts) + self.reply)
                h.send_head(
                    200, [("content-length", str(len(body))), ("content-type", "application/json"), *self.extra_headers]
                )
                h.write(body[: len(body) // 2])
                h.drop_connection()
        h.send_json(200, self._completion_body(model, "".join(parts)))

    @staticmethod
    def _completion_body(model: str, content: str) -> bytes:
        usage = len(content) // 4
        body = {
            "id": f"chatcmpl-{uuid.uuid4()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": usage, "total_tokens": usage},
        }
        return json.dumps(body, ensure_ascii=False).encode()

    def _garbage(self, h: UpstreamHandler, stream: bool) -> None:
        if not stream:
            h.send_json(200, b"{not json")
            return
        h.start_stream()
        h.wait(self.chunk_delay + self.first_chunk_delay)
        h.write_chunk(b"data: {not json\n\n")
        h.write_chunk(b"data: [DONE]\n\n")
        h.end_stream()
