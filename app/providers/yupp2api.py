"""yupp2Api: an OpenAI-compatible server in front of yupp.ai, with its own quirks."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import GatewayError, UpstreamError, UpstreamUnavailable
from .base import ChatRequest, Provider, ProviderSettings
from .cache import Refreshing
from .http import StreamTimer, UpstreamClient, read_error_body, status_error, upstream_message
from .stream import SSEChatStream

log = logging.getLogger(__name__)

# After 3 failures in 300 s yupp2Api answers this to everything for 300 s: retrying within a request is useless.
_COOLDOWN = "No valid Yupp.ai accounts available"


class Yupp2Api(Provider):
    """Chat and models via yupp2Api. Its model ids hold newlines and emoji: they are passed on byte for byte."""

    name = "yupp2api"
    label = "yupp2Api"
    selector = "yupp2api"

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self.client = UpstreamClient(
            self.label,
            settings.base_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.first_byte_timeout,
        )
        cache = settings.models_cache_seconds
        self._models = Refreshing(self._fetch_models, cache, min(5.0, cache))

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def chat(self, request: ChatRequest, timeout: float | None = None) -> dict[str, Any]:
        response = self.client.request(
            "POST",
            "/v1/chat/completions",
            body=request.upstream_body(False),
            headers=self._headers(),
            read_timeout=timeout,
        )
        if response.status_code != 200:
            raise self._http_error(response.status_code, read_error_body(response), response.headers)
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError(f"{self.label} answered with something that is not JSON.") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"{self.label} answered JSON that is not a chat completion.")
        return data

    def stream(self, request: ChatRequest, timer: StreamTimer) -> SSEChatStream:
        response = self.client.request(
            "POST",
            "/v1/chat/completions",
            body=request.upstream_body(True),
            headers=self._headers(),
            stream=True,
            read_timeout=timer.read_timeout(),
        )
        # yupp2Api answers errors as plain JSON even when a stream was asked for.
        if response.status_code != 200:
            raise self._http_error(response.status_code, read_error_body(response), response.headers)
        return SSEChatStream(self.client, response, timer)

    def models(self) -> list[dict[str, Any]]:
        models = self._models.get()
        if models is None:
            raise UpstreamError(
                f"Cannot list models: {self.label} at {self.client.public_url} is not answering.",
                code="upstream_unreachable",
            )
        return [
            {"id": m["id"], "object": "model", "created": m.get("created") or 0, "owned_by": self.name} for m in models
        ]

    def _fetch_models(self) -> list[dict[str, Any]] | None:
        # A slow yupp.ai freezes the whole yupp2Api, model listing included: the short health timeout bounds it.
        try:
            response = self.client.request(
                "GET", "/v1/models", headers=self._headers(), read_timeout=self.settings.health_timeout
            )
            body = response.json() if response.status_code == 200 else read_error_body(response)
        except (GatewayError, ValueError) as exc:
            log.info("model list from %s unavailable: %s", self.label, exc)
            return None
        if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            return [m for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        log.info("model list from %s: HTTP %s", self.label, response.status_code)
        return None

    def health(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            # /models needs no key: health says whether the server answers, not whether our key is right.
            response = self.client.request("GET", "/models", read_timeout=self.settings.health_timeout)
            response.close()
        except GatewayError as exc:
            return {"ok": False, "error": exc.message, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        result = {
            "ok": response.status_code == 200,
            "status_code": response.status_code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if not result["ok"]:
            result["error"] = f"HTTP {response.status_code} from /models"
        return result

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.client.public_url}

    def close(self) -> None:
        self.client.close()

    def _http_error(self, status: int, body: Any, headers: Any) -> GatewayError:
        said = upstream_message(body)
        if status == 503 and _COOLDOWN in said:
            return UpstreamUnavailable(
                f"{self.label} has no working yupp.ai account right now and pauses for a few minutes "
                f"({self.label} said: {said})",
                code="upstream_cooldown",
                retryable=False,
            )
        if status in (401, 403):
            return UpstreamError(
                f"{self.label} rejected the gateway's key (HTTP {status}); set YUPP2API_API_KEY to one of its "
                "CLIENT_API_KEYS.",
                code="upstream_auth_failed",
                retryable=False,
            )
        return status_error(self.label, status, said, headers)
