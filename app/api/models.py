"""GET /v1/models: every provider's models in OpenAI's list format."""

from __future__ import annotations

from flask import Blueprint

from ..errors import NotFoundError
from ..providers.router import get_router

bp = Blueprint("models", __name__)


@bp.get("/models")
def list_models():
    """List the models the gateway can route to."""
    return {"object": "list", "data": get_router().models()}


@bp.get("/models/<path:model_id>")
def retrieve_model(model_id: str):
    """Describe one model."""
    for model in get_router().models():
        if model["id"] == model_id:
            return model
    raise NotFoundError(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
