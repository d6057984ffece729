"""yupp2Api: an OpenAI-compatible server in front of yupp.ai, with its own quirks."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import GatewayError, UpstreamError, UpstreamUnavailable
from .base import ProviderSettings
from .cache import Refreshing
from .openai_compat import OpenAICompatible
from .upstream_errors import status_error, upstream_message

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
        self._models = Refreshing(self.fetch_models, cache, min(5.0, cache))

    def models(self) -> list[dict[str, Any]]:
        models = self._models.get()
        if models is None:
            raise UpstreamError(
                f"Cannot list models: {self.label} is not answering.",
                code="upstream_unreachable",
            )
        return [
            {"id": m["id"], "object": "model", "created": m.get("created") or 0, "owned_by": self.name} for m in models
        ]

    def models_version(self) -> tuple[int, ...]:
        return (self._models.version(),)

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
