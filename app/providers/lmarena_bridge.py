"""LMArenaBridge: a local FastAPI server driving lmarena.ai through a browser userscript."""

from __future__ import annotations

import json
import logging
import re
from functools import cached_property
from typing import Any

from ..errors import (
    GatewayError,
    RateLimitError,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .base import Chunk, ProviderSettings
from .bridge_files import BridgeFiles
from .cache import Refreshing
from .openai_compat import OpenAICompatible
from .sse_stream import SSEChatStream
from .upstream_errors import status_error, upstream_message

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
    error = _bridge_error(text.strip())
    error.from_lmarena = True
    return error


def _bridge_error(text: str) -> GatewayError:
    said = f" (bridge said: {text})"
    status = _LMARENA_STATUS.search(text)
    if status and status.group(1) == "429":
        # lmarena.ai's 429 comes without a Retry-After: the outcome table's cooldown sets it (dispatch.py).
        return RateLimitError("lmarena.ai is rate-limiting this session; retry later" + said)
    if any(marker in text for marker in _CLOUDFLARE):
        return UpstreamUnavailable(
            "lmarena.ai asked for a human (Cloudflare) check; the bridge is reloading the page, retry in a few seconds"
            + said,
            code="upstream_verification",
            retry_after=5,
        )
    if _TOO_LARGE in text:
        return RequestTooLarge(
            "An attachment exceeds lmarena.ai's size limit (about 5 MB)" + said, code="attachment_too_large"
        )
    if _TIMED_OUT.search(text):
        return UpstreamTimeout("lmarena.ai did not answer in time" + said)
    if status:
        return UpstreamError(f"lmarena.ai answered HTTP {status.group(1)}" + said)
    return UpstreamError("LMArena Bridge failed to get an answer from lmarena.ai" + said, code="bridge_error")


class BridgeStream(SSEChatStream):
    """The bridge reports failures mid-stream as content `\\n\\n[LMArena Bridge Error]: ...` with HTTP 200."""

    def inspect(self, chunk: Chunk) -> list[Chunk]:
        # Cheap test on the raw text first: nearly every chunk is plain content.
        if ERROR_MARKER in chunk.text:
            content = _delta_text(chunk.obj)
            if ERROR_MARKER in content:
                before, _, text = content.partition(ERROR_MARKER)
                if not before.strip():
                    raise bridge_error(text)
                # The text before the marker is the model's: it reaches the client, then the error.
                self.failure = bridge_error(text)
                obj = chunk.obj
                obj["choices"][0]["delta"]["content"] = before.rstrip("\n")
                return [Chunk(json.dumps(obj, ensure_ascii=False), obj)]
        return [chunk]

    def error_chunk(self, obj: dict[str, Any]) -> GatewayError:
        return bridge_error(upstream_message(obj))


class LMArenaBridge(OpenAICompatible):
    """Chat, images (through chat) and model listing via LMArenaBridge's OpenAI-style API."""

    name = "lmarena_bridge"
    label = "LMArena Bridge"
    selector = "bridge_direct"
    tab = True
    stream_class = BridgeStream
    # The bridge has no /health; /v1/models needs no key, and 404 there only means models.json is empty.
    health_ok = frozenset({200, 404})

    def __init__(
        self,
        settings: ProviderSettings,
        files: BridgeFiles | None = None,
        key_source: str = "LMARENA_BRIDGE_API_KEY",
        label: str | None = None,
    ) -> None:
        if label:
            self.label = label  # before the client is built: its errors name the bridge by it
        super().__init__(settings)
        self.files = files or BridgeFiles()
        # Where its key came from, for the message when the bridge refuses it: the setting, or a session's own.
        self.key_source = key_source
        cache = settings.models_cache_seconds
        self._remote_models = Refreshing(self.fetch_models, cache, min(5.0, cache))

    @cached_property
    def breaker_key(self) -> str:
        # Users run one bridge per browser tab: each has its own circuit, the configured one included.
        return bridge_key(self.public_url)

    def headers(self) -> dict[str, str]:
        # The bridge on the same machine keeps its key in config.jsonc; use it when no key is configured here.
        key = self.settings.api_key or str(self.files.config.get("api_key") or "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def check_completion(self, data: dict[str, Any]) -> None:
        content = _message_text(data)
        if ERROR_MARKER in content:
            raise bridge_error(content.partition(ERROR_MARKER)[2])

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
        remote = self._remote_models.get()
        if remote is None and not listed:
            raise UpstreamError(
                f"Cannot list models: {self.label} is not answering and LMARENA_BRIDGE_MODELS_FILE is not set.",
                code="upstream_unreachable",
            )
        for item in remote or ():
            listed.setdefault(item["id"], item.get("created") or created)
        return [{"id": name, "object": "model", "created": ts, "owned_by": self.name} for name, ts in listed.items()]

    def models_version(self) -> tuple[int, ...]:
        return (self.files.models_version, self._remote_models.version())

    def models_when_refused(self, status: int) -> list[dict[str, Any]] | None:
        # 404 is the bridge's way of saying its models.json is empty.
        return [] if status == 404 else super().models_when_refused(status)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "models_file": bool(self.files.models)}

    def http_error(self, status: int, body: Any, headers: Any) -> GatewayError:
        said = upstream_message(body)
        if (status == 500 and ERROR_MARKER in said) or (status == 413 and _TOO_LARGE in said):
            return bridge_error(said.partition(ERROR_MARKER)[2] or said)
        if status in (401, 403):
            return UpstreamError(
                f"{self.label} rejected the gateway's key (HTTP {status}); set {self.key_source} to the "
                "api_key in the bridge's config.jsonc.",
                code="upstream_auth_failed",
                retryable=False,
            )
        if status == 503 and _NO_BROWSER in said:
            return UpstreamUnavailable(
                "LMArena Bridge has no browser connected: open lmarena.ai in a browser with the LMArena Bridge "
                f"userscript enabled (bridge said: {said})",
                code="bridge_no_browser",
                retryable=False,  # a browser does not appear within a retry's delay
            )
        if status == 503 and _WAITING_REFRESH in said:
            return UpstreamUnavailable(
                f"LMArena Bridge is waiting for the browser to reload after a human check; retry in a few seconds "
                f"(bridge said: {said})",
                code="upstream_verification",
                retry_after=5,
            )
        return status_error(self.label, status, said, headers)


def bridge_key(public_url: str) -> str:
    """Return the circuit name of the bridge at public_url (a URL without credentials)."""
    return f"{LMArenaBridge.name}@{public_url.rstrip('/')}"


def bridge_url(key: str) -> str | None:
    """Return the public URL in a bridge's circuit name, or None when key names no bridge."""
    name, at, url = key.partition("@")
    return url if at and name == LMArenaBridge.name else None


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
