"""GET /v1/models: the models a request with the same headers may ask for, in OpenAI's list format."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from ..errors import GatewayError, NotFoundError
from ..pool_rules import pool_members, pool_target
from ..providers import get_router
from ..session_rules import bridge_of, session_from_headers
from ..store import Session
from ..store.base import parse_time

bp = Blueprint("models", __name__)


def _models() -> list[dict[str, Any]]:
    session = session_from_headers()
    if session is not None:
        return _accepted(session)
    target = pool_target()
    if target is not None:
        return _pool_models(pool_members(*target))
    selector = request.headers.get("X-Provider")
    if selector and selector.strip().lower() != "auto":
        # An explicit X-Provider lists that provider's models only.
        return with_aliases(get_router().plan("", selector)[0].models())
    return with_aliases(get_router().models())


def _accepted(session: Session) -> list[dict[str, Any]]:
    """Return the names a session accepts: its models map's, else its bridge's list (and aliases into it)."""
    if session.models:
        created = int(parse_time(session.updated_at).timestamp())
        owner = get_router().bridge.name
        return [{"id": name, "object": "model", "created": created, "owned_by": owner} for name in session.models]
    return with_aliases(bridge_of(session).models())


def _pool_models(members: list[Session]) -> list[dict[str, Any]]:
    """Return what a pool's active members accept together, the first member by name winning a duplicate."""
    seen: dict[str, dict[str, Any]] = {}
    errors: list[GatewayError] = []
    for session in sorted(members, key=lambda s: s.session_name):
        try:
            for model in _accepted(session):
                seen.setdefault(model["id"], model)
        except GatewayError as exc:  # a member whose bridge cannot list its models adds nothing
            errors.append(exc)
    if errors and not seen:
        raise errors[0]
    return list(seen.values())


def with_aliases(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return models as a request without a models map may name them: GATEWAY_MODEL_ALIASES' names included.

    An alias is listed when its target is (as the target, owner included); a listed name that is also an alias is
    sent as the alias's target, so it stays only when that target is listed too: exactly what chat accepts.
    """
    aliases = current_app.config["GATEWAY_MODEL_ALIASES"]
    if not aliases:
        return models
    listed = {model["id"]: model for model in models}
    result = [model for model in models if model["id"] not in aliases]
    result.extend({**listed[target], "id": name} for name, target in aliases.items() if target in listed)
    return result


@bp.get("/models")
def list_models():
    """List the models a request may ask for: a session's, a pool's, or the gateway's (with its aliases)."""
    return {"object": "list", "data": _models()}


@bp.get("/models/<path:model_id>")
def retrieve_model(model_id: str):
    """Describe one model."""
    for model in _models():
        if model["id"] == model_id:
            return model
    raise NotFoundError(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
