"""LMArenaBridge: a local FastAPI server driving lmarena.ai through a browser userscript."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .base import ChatRequest, ChatStream, Chunk, Provider
from .bridge_files import BridgeFiles
from .http import UpstreamClient, read_error_body, upstream_message

log = logging.getLogger(__name__)

ERROR_MARKER = "[LMArena Bridge Error]:"

# The bridge speaks Chinese; these are the texts its code emits (HEAD a5d087b), matched to what they mean.
_NO_BROWSER = "油猴脚本客户端未连接"
_WAITING_REFRESH = "正在等待浏览器刷新"
_CLOUDFLARE = ("检测到人机验证", "正在等待人机验证完成")
_TOO_LARGE = "附件大小超过"
_LMARENA_STATUS = re.compile(r"状态:\s*(\d{3})")
_TIMED_OUT = re.compile(r"Response timed out after")


def bridge_error(text: str) -> GatewayError:
    """Translate the text after `[LMArena Bridge Error]:` into the error a client should see."""
    text = text.strip()
    said = f" (bridge said: {text})"
    status = _LMARENA_STATUS.search(text)
    if status and status.group(1) == "429":
        return RateLimitError("lmarena.ai is rate-limiting this session; retry later" + said, retry_after=30)
    if any(marker in text for marker in _CLOUDFLARE):
        return UpstreamUnavailable(
            "lmarena.ai asked for a human (Cloudflare) check; the bridge is reloading the page, retry in a few seconds"
            + said,
            code="upstream_verification",
            retry_after=5,
        )
    if _TOO_LARGE in text:
        return InvalidRequestError(
            "An attachment exceeds lmarena.ai's size limit (about 5 MB)" + said,
            status_code=413,
            code="attachment_too_large",
        )
    if _TIMED_OUT.search(text):
        return UpstreamTimeout("lmarena.ai did not answer in time" + said)
    if status:
        return UpstreamError(f"lmarena.ai answered HTTP {status.group(1)}" + said)
    return UpstreamError("LMArena Bridge failed to get an answer from lmarena.ai" + said, code="bridge_error")


class LMArenaBridge(Provider):
    """Chat, images (through chat) and model listing via LMArenaBridge's OpenAI-style API."""

    name = "lmarena_bridge"
    label = "LMArena Bridge"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        timeout: float = 180.0,
        connect_timeout: float = 5.0,
        files: BridgeFiles | None = None,
        models_cache_seconds: float = 30.0,
        health_timeout: float = 2.0,
    ) -> None:
        self.client = UpstreamClient(self.label, base_url, connect_timeout=connect_timeout, read_timeout=timeout)
        self.files = files or BridgeFiles()
        self._api_key = api_key
        self.models_cache_seconds = models_cache_seconds
        self.health_timeout = health_timeout
        self._remote_models: tuple[float, list[dict[str, Any]] | None] = (0.0, None)
        self._models_lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        # The bridge on the same machine keeps its key in config.jsonc; use it when no key is configured here.
        key = self._api_key or str(self.files.config.get("api_key") or "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def chat(self, request: ChatRequest) -> dict[str, Any]:
        response = self.client.request(
            "POST", "/v1/chat/completions", body=request.upstream_body(False), headers=self._headers()
        )
        if response.status_code != 200:
            raise self._http_error(response.status_code, read_error_body(response), response.headers)
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError(f"{self.label} answered with something that is not JSON.") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"{self.label} answered JSON that is not a chat completion.")
        content = _message_text(data)
        if ERROR_MARKER in content:
            raise bridge_error(content.partition(ERROR_MARKER)[2])
        return data

    def stream(self, request: ChatRequest) -> ChatStream:
        response = self.client.request(
            "POST", "/v1/chat/completions", body=request.upstream_body(True), headers=self._headers(), stream=True
        )
        if response.status_code != 200:
            raise self._http_error(response.status_code, read_error_body(response), response.headers)
        return BridgeStream(self, response)

    def image_models(self) -> list[str]:
        """Return the models.json names typed `:image`."""
        return [m.name for m in self.files.models.values() if m.kind == "image"]

    def model_kind(self, model: str) -> str | None:
        """Return "text" or "image" when models.json knows the model, else None."""
        entry = self.files.models.get(model)
        return entry.kind if entry else None

    def models(self) -> list[dict[str, Any]]:
        created = self.files.models_mtime
        listed = {name: created for name in self.files.models}
        remote = self._fetch_remote_models()
        if remote is None and not listed:
            raise UpstreamError(
                f"Cannot list models: {self.label} at {self.client.public_url} is not answering and "
                "LMARENA_BRIDGE_MODELS_FILE is not set.",
                code="upstream_unreachable",
            )
        for item in remote or ():
            listed.setdefault(item["id"], item.get("created") or created)
        return [{"id": name, "object": "model", "created": ts, "owned_by": self.name} for name, ts in listed.items()]

    def _fetch_remote_models(self) -> list[dict[str, Any]] | None:
        expires, cached = self._remote_models
        if time.monotonic() < expires:
            return cached
        with self._models_lock:
            expires, cached = self._remote_models
            if time.monotonic() < expires:
                return cached
            result = None
            try:
                response = self.client.request("GET", "/v1/models", read_timeout=self.health_timeout)
                body = response.json() if response.status_code == 200 else read_error_body(response)
                if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
                    result = [m for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
                elif response.status_code == 404:
                    result = []  # the bridge's way of saying its models.json is empty
            except (GatewayError, ValueError) as exc:
                log.info("model list from %s unavailable: %s", self.label, exc)
            # Remember a failure briefly too, so a down bridge is not asked on every /v1/models call.
            ttl = self.models_cache_seconds if result is not None else min(5.0, self.models_cache_seconds)
            self._remote_models = (time.monotonic() + ttl, result)
            return result

    def health(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            response = self.client.request("GET", "/v1/models", read_timeout=self.health_timeout)
            response.close()
        except GatewayError as exc:
            return {"ok": False, "error": exc.message, "latency_ms": _ms_since(started)}
        # The bridge answers 404 when its models.json is empty: it is up all the same.
        ok = response.status_code in (200, 404)
        result = {"ok": ok, "status_code": response.status_code, "latency_ms": _ms_since(started)}
        if not ok:
            result["error"] = f"HTTP {response.status_code} from /v1/models"
        return result

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.client.public_url, "models_file": bool(self.files.models)}

    def close(self) -> None:
        self.client.close()

    def _http_error(self, status: int, body: Any, headers: Any) -> GatewayError:
        said = upstream_message(body)
        if status == 500 and ERROR_MARKER in said:
            return bridge_error(said.partition(ERROR_MARKER)[2])
        if status == 413:
            if _TOO_LARGE in said:
                return bridge_error(said)
            return InvalidRequestError(f"{self.label}: {said}", status_code=413, code="request_too_large")
        if status in (401, 403):
            return UpstreamError(
                f"{self.label} rejected the gateway's key (HTTP {status}); set LMARENA_BRIDGE_API_KEY to the "
                "api_key in the bridge's config.jsonc.",
                code="upstream_auth_failed",
            )
        if status == 503 and _NO_BROWSER in said:
            return UpstreamUnavailable(
                "LMArena Bridge has no browser connected: open lmarena.ai in a browser with the LMArena Bridge "
                f"userscript enabled (bridge said: {said})",
                code="bridge_no_browser",
            )
        if status == 503 and _WAITING_REFRESH in said:
            return UpstreamUnavailable(
                f"LMArena Bridge is waiting for the browser to reload after a human check; retry in a few seconds "
                f"(bridge said: {said})",
                code="upstream_verification",
                retry_after=5,
            )
        if status == 429:
            return RateLimitError(f"{self.label} is rate-limiting requests ({said})", retry_after=_retry_after(headers))
        if status == 404:
            return NotFoundError(f"{self.label}: {said}", code="model_not_found")
        if 400 <= status < 500:
            return InvalidRequestError(f"{self.label} rejected the request: {said}", status_code=status)
        if status == 503:
            return UpstreamUnavailable(f"{self.label} is unavailable: {said}", retry_after=_retry_after(headers))
        if status == 504:
            return UpstreamTimeout(f"{self.label} timed out: {said}")
        return UpstreamError(f"{self.label} failed with HTTP {status}: {said}")


class BridgeStream(ChatStream):
    """Chunks from the bridge, with its in-band `[LMArena Bridge Error]:` text turned into a GatewayError."""

    def __init__(self, provider: LMArenaBridge, response) -> None:
        self.provider, self.response = provider, response
        self._aborted = False

    def __iter__(self) -> Iterator[Chunk]:
        label = self.provider.label
        for data in self.provider.client.sse_data(self.response, lambda: self._aborted):
            if data == "[DONE]":
                return
            try:
                obj = json.loads(data)
            except ValueError:
                raise UpstreamError(
                    f"{label} sent a stream chunk that is not JSON.", code="upstream_bad_stream"
                ) from None
            if not isinstance(obj, dict):
                raise UpstreamError(f"{label} sent a stream chunk that is not an object.", code="upstream_bad_stream")
            if "error" in obj:
                raise bridge_error(upstream_message(obj))
            # Cheap test on the raw text first: nearly every chunk is plain content.
            if ERROR_MARKER in data:
                content = _delta_text(obj)
                if ERROR_MARKER in content:
                    before, _, text = content.partition(ERROR_MARKER)
                    if before.strip():
                        obj["choices"][0]["delta"]["content"] = before.rstrip("\n")
                        yield Chunk(json.dumps(obj, ensure_ascii=False), obj)
                    raise bridge_error(text)
            yield Chunk(data, obj)

    def abort(self) -> None:
        self._aborted = True
        try:
            self.response.raw.shutdown()
        except (AttributeError, ValueError, RuntimeError, OSError):
            pass  # already closed or released: nothing is blocked on it

    def close(self) -> None:
        self.response.close()


def _delta_text(obj: dict[str, Any]) -> str:
    try:
        content = obj["choices"][0]["delta"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""


def _message_text(data: dict[str, Any]) -> str:
    try:
        content = data["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""


def _retry_after(headers: Any) -> float | None:
    try:
        return min(float(headers.get("Retry-After")), 300.0)
    except (TypeError, ValueError):
        return None


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
