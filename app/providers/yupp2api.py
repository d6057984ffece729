"""yupp2Api: an OpenAI-compatible server in front of yupp.ai, with its own quirks."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import GatewayError, UpstreamError, UpstreamUnavailable
from .base import ProviderSettings
from .cache import Refreshing
from .http import read_error_body, status_error, upstream_message
from .openai_compat import OpenAICompatible

log = logging.getLogger(__name__)

# After 3 failures in 300 s yupp2Api answers this to everything for 300 s: retrying within a request is useless.
_COOLDOWN = "No valid Yupp.ai accounts available"


class Yupp2Api(OpenAICompatible):
    """Chat and models via yupp2Api. Its model ids hold newlines and emoji: they are passed on byte for byte."""

    name = "yupp2api"
    label = "yupp2Api"
    selector = "yupp2api"
    # /models needs no key: health says whether the server answers, not whether our key is right.
    health_path = "/models"

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        cache = settings.models_cache_seconds
        self._models = Refreshing(self._fetch_models, cache, min(5.0, cache))

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
                "GET", "/v1/models", headers=self.headers(), read_timeout=self.settings.health_timeout
            )
            body = response.json() if response.status_code == 200 else read_error_body(response)
        except (GatewayError, ValueError) as exc:
            log.info("model list from %s unavailable: %s", self.label, exc)
            return None
        if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("data"), list):
            return [m for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        log.info("model list from %s: HTTP %s", self.label, response.status_code)
        return None

    def http_error(self, status: int, body: Any, headers: Any) -> GatewayError:
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
