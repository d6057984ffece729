"""What LMArenaBridge and yupp2Api have in common: OpenAI's chat API over pooled HTTP."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..errors import GatewayError, UpstreamError
from .base import ChatRequest, Provider, ProviderSettings
from .sse_stream import SSEChatStream
from .transport import StreamTimer, UpstreamClient, read_error_body
from .upstream_errors import status_error, upstream_message

log = logging.getLogger(__name__)


class OpenAICompatible(Provider):
    """POST /v1/chat/completions (JSON or SSE) and a cheap GET for health; subclasses add their upstream's habits."""

    stream_class = SSEChatStream
    health_path = "/v1/models"
    health_ok = frozenset({200})

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self.client = UpstreamClient(
            self.label,
            settings.base_url,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.first_byte_timeout,
            max_bytes=settings.max_response_bytes,
            ca_file=settings.ca_file,
        )

    def headers(self) -> dict[str, str]:
        """Return the headers that authenticate the gateway to the upstream."""
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def chat(self, request: ChatRequest, timeout: float | None = None) -> dict[str, Any]:
        # The whole answer, body included, is due by the deadline: a trickling body cannot hold a worker longer.
        timer = StreamTimer(first_byte=timeout or self.settings.first_byte_timeout, idle=self.settings.idle_timeout)
        response = self.client.request(
            "POST",
            "/v1/chat/completions",
            body=request.upstream_body(False),
            headers=self.headers(),
            read_timeout=timer.read_timeout(),
        )
        if response.status != 200:
            raise self.http_error(response.status, read_error_body(response), response.headers)
        body = self.client.read_body(response, timer)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply for Python's parser
            raise UpstreamError(f"{self.label} answered with something that is not JSON.") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"{self.label} answered JSON that is not a chat completion.")
        self.check_completion(data)
        return data

    def check_completion(self, data: dict[str, Any]) -> None:
        """Raise GatewayError when a 200 completion is really an error."""

    def stream(self, request: ChatRequest, timer: StreamTimer) -> SSEChatStream:
        exchange = self.client.send_stream("/v1/chat/completions", request.upstream_body(True), self.headers())
        return self.stream_class(exchange, timer, self.label, self.http_error, self.settings.max_response_bytes)

    def fetch_models(self) -> list[dict[str, Any]] | None:
        """Return the upstream's /v1/models entries, or None when it cannot say (bounded by the health timeout)."""
        # yupp2Api freezes whole while yupp.ai is slow, model listing included: hence the short timeout.
        timer = StreamTimer(self.settings.health_timeout, self.settings.health_timeout)
        try:
            response = self.client.request(
                "GET", "/v1/models", headers=self.headers(), read_timeout=timer.read_timeout()
            )
            if response.status == 200:
                body = json.loads(self.client.read_body(response, timer))
            else:
                body = read_error_body(response)
        except (GatewayError, ValueError, RecursionError) as exc:
            log.info("model list from %s unavailable: %s", self.label, exc)
            return None
        if response.status == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            return [m for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        return self.models_when_refused(response.status)

    def models_when_refused(self, status: int) -> list[dict[str, Any]] | None:
        """Return the model list an error status stands for (None: unknown)."""
        log.info("model list from %s: HTTP %s", self.label, status)
        return None

    def http_error(self, status: int, body: Any, headers: Any) -> GatewayError:
        """Translate an error status; subclasses catch their upstream's special cases first."""
        return status_error(self.label, status, upstream_message(body), headers)

    def health(self) -> dict[str, Any]:
        started = time.perf_counter()
        timer = StreamTimer(self.settings.health_timeout, self.settings.health_timeout)
        try:
            response = self.client.request("GET", self.health_path, read_timeout=timer.read_timeout())
            self.client.read_body(response, timer)  # read to the end, so the connection is kept for reuse
        except GatewayError as exc:
            return {"ok": False, "error": exc.message, "latency_ms": _ms_since(started)}
        ok = response.status in self.health_ok
        result = {"ok": ok, "status_code": response.status, "latency_ms": _ms_since(started)}
        if not ok:
            result["error"] = f"HTTP {response.status} from {self.health_path}"
        return result

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": self.public_url}

    def close(self) -> None:
        self.client.close()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
