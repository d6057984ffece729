"""GET /v1/models: every provider's models in OpenAI's list format."""

from __future__ import annotations

from flask import Blueprint, request

from ..errors import NotFoundError
from ..providers import get_router
from ..session_rules import session_from_headers
from ..store.base import parse_time

bp = Blueprint("models", __name__)


def _models() -> list[dict]:
    session = session_from_headers()
    router = get_router()
    if session is None:
        selector = request.headers.get("X-Provider")
        if selector and selector.strip().lower() != "auto":
            # An explicit X-Provider lists that provider's models only.
            return router.plan("", selector)[0].models()
        return router.models()
    bridge = get_router().bridge_for(session.bridge_base_url, session.bridge_api_key)
    if session.models:
        created = int(parse_time(session.updated_at).timestamp())
        return [{"id": name, "object": "model", "created": created, "owned_by": bridge.name} for name in session.models]
    return bridge.models()


@bp.get("/models")
def list_models():
    """List the models the gateway can route to (a session's own when X-Session-Name is sent)."""
    return {"object": "list", "data": _models()}


@bp.get("/models/<path:model_id>")
def retrieve_model(model_id: str):
    """Describe one model."""
    for model in _models():
        if model["id"] == model_id:
            return model
    raise NotFoundError(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
