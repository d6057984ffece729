"""POST /v1/images/generations, served by the bridge's chat endpoint and its `![Image](url)` answers."""

from __future__ import annotations

import re
import time

from flask import Blueprint, current_app

from .. import request_record
from ..errors import InvalidRequestError, UpstreamError
from ..image_fetch import ImageFetch
from ..providers import get_router
from ..providers.base import ChatRequest
from ..providers.lmarena_bridge import LMArenaBridge
from ..session_rules import resolve_model, session_from_headers
from ..validation import parse_image_request, read_json_body

bp = Blueprint("images", __name__)

IMAGE_MARKDOWN = re.compile(r"!\[[^\]]*\]\((\S+?)\)")


@bp.post("/images/generations")
def create_image():
    """Generate images from a prompt with an LMArena image model."""
    image = parse_image_request(read_json_body(), current_app.config["GATEWAY_IMAGE_MAX_N"])
    session = session_from_headers()
    bridge = get_router().bridge_for(session and session.bridge_base_url, session and session.bridge_api_key)
    model = image.model or _default_image_model(bridge)
    # A session's models map or GATEWAY_MODEL_ALIASES may name another model, as for chat.
    upstream_model, extra = resolve_model(session, model)
    _check_image_model(bridge, upstream_model)
    record = request_record.current()
    record.provider, record.model = bridge.name, model
    record.model_known = (
        True if upstream_model != model or (session and session.models) else get_router().knows(upstream_model)
    )
    chat = ChatRequest(
        body={"model": model, "messages": [{"role": "user", "content": image.prompt}]},
        model=model,
        extra=extra,
        upstream_model=upstream_model,
    )
    urls: list[str] = []
    # One bridge call yields one image; n calls at most, stopping early if a call yields several.
    for _ in range(image.n):
        if len(urls) >= image.n:
            break
        urls.extend(_generate(bridge, chat))
    urls = urls[: image.n]
    if image.response_format == "b64_json":
        # The URLs are the model's answer, which the prompt can dictate: ImageFetch fetches only public images.
        fetch = ImageFetch(current_app.config)
        data = [{"b64_json": fetch.b64(url)} for url in urls]
    else:
        data = [{"url": url} for url in urls]
    return {"created": int(time.time()), "data": data}


def _default_image_model(bridge: LMArenaBridge) -> str:
    known = bridge.image_models()
    model = current_app.config["GATEWAY_DEFAULT_IMAGE_MODEL"] or (known[0] if known else "")
    if not model:
        raise InvalidRequestError(
            "'model' is required: no GATEWAY_DEFAULT_IMAGE_MODEL is set and models.json lists no ':image' model.",
            param="model",
        )
    return model


def _check_image_model(bridge: LMArenaBridge, model: str) -> None:
    if bridge.model_kind(model) == "text":
        known = bridge.image_models()
        raise InvalidRequestError(
            f"'{model}' is a text model in models.json; image models: {', '.join(known) or 'none'}.",
            param="model",
            code="model_not_image",
        )


def _generate(bridge: LMArenaBridge, chat: ChatRequest) -> list[str]:
    # Through the dispatcher: the bridge's retries, time budget and circuit breaker apply to images too.
    _, completion = get_router().dispatcher([bridge]).complete(chat)
    message = completion["choices"][0].get("message") if completion["choices"] else None
    text = message.get("content") if isinstance(message, dict) else None
    urls = IMAGE_MARKDOWN.findall(text) if isinstance(text, str) else []
    if not urls:
        shown = (text or "")[:200]
        raise UpstreamError(f"The model '{chat.model}' answered without an image: {shown!r}", code="no_image_returned")
    return urls
