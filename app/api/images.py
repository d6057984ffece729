"""POST /v1/images/generations, served by the bridge's chat endpoint and its `![Image](url)` answers."""

from __future__ import annotations

import re
import time
from functools import partial

from flask import Blueprint, current_app, request

from .. import request_record
from ..errors import InvalidRequestError, UpstreamError
from ..image_fetch import ImageFetch
from ..pool_rules import pool_sends, pool_target
from ..providers import get_router
from ..providers.base import ChatRequest
from ..providers.dispatch import Dispatcher
from ..providers.lmarena_bridge import LMArenaBridge
from ..providers.pools import Member
from ..providers.router import Router
from ..session_rules import resolve_model, session_from_headers
from ..validation import parse_image_request, read_json_body

bp = Blueprint("images", __name__)

IMAGE_MARKDOWN = re.compile(r"!\[[^\]]*\]\((\S+?)\)")


@bp.post("/images/generations")
def create_image():
    """Generate images from a prompt with an LMArena image model."""
    image = parse_image_request(read_json_body(), current_app.config["GATEWAY_IMAGE_MAX_N"])
    session = session_from_headers()
    target = None if session else pool_target()
    router = get_router()
    # Every bridge reads the same models.json (LMARENA_BRIDGE_MODELS_FILE): the configured one stands for all.
    model = image.model or _default_image_model(router.bridge)
    record = request_record.current()
    record.provider, record.model = router.bridge.name, model
    chat = ChatRequest(body={"model": model, "messages": [{"role": "user", "content": image.prompt}]}, model=model)
    if target is not None:
        # As for chat: the members accepting the model, each sent it as its own map says; text models left out.
        members = _image_members(router.bridge, pool_sends(*target, model))
        record.model_known = True  # some member accepts it
        walk = partial(_pool_walk, router, request.headers.get("X-Provider"), target, members)
    else:
        # A session's models map or GATEWAY_MODEL_ALIASES may name another model, as for chat.
        chat.upstream_model, chat.extra = resolve_model(session, model)
        _check_image_model(router.bridge, chat.upstream_model)
        aliased = chat.upstream_model != model or (session and session.models)
        record.model_known = True if aliased else router.knows(chat.upstream_model)
        bridge = router.bridge_for(session and session.bridge_base_url, session and session.bridge_api_key)
        walk = partial(router.dispatcher, [bridge])
    urls: list[str] = []
    # One bridge call yields one image; n calls at most, stopping early if a call yields several. Each call is a
    # request of its own to a pool: the next member's turn, members paused meanwhile left out.
    for _ in range(image.n):
        if len(urls) >= image.n:
            break
        urls.extend(_generate(walk(), chat))
    urls = urls[: image.n]
    if image.response_format == "b64_json":
        # The URLs are the model's answer, which the prompt can dictate: ImageFetch fetches only public images.
        fetch = ImageFetch(current_app.config)
        data = [{"b64_json": fetch.b64(url)} for url in urls]
    else:
        data = [{"url": url} for url in urls]
    return {"created": int(time.time()), "data": data}


def _pool_walk(router: Router, selector: str | None, target: tuple[str, str], members: list[Member]) -> Dispatcher:
    plan, pool = router.plan_pool(selector, *target, members)
    return router.dispatcher(plan, pool)


def _image_members(bridge: LMArenaBridge, members: list[Member]) -> list[Member]:
    images = [m for m in members if bridge.model_kind(m.model) != "text"]
    if members and not images:
        _check_image_model(bridge, members[0].model)
    return images


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


def _generate(dispatcher: Dispatcher, chat: ChatRequest) -> list[str]:
    # Through the dispatcher: retries, time budget, circuit breakers and a pool's outcome table apply to images too.
    try:
        _, completion = dispatcher.complete(chat)
    finally:
        request_record.current().served_by(None, bridge=dispatcher.last_bridge)
    message = completion["choices"][0].get("message") if completion["choices"] else None
    text = message.get("content") if isinstance(message, dict) else None
    urls = IMAGE_MARKDOWN.findall(text) if isinstance(text, str) else []
    if not urls:
        shown = (text or "")[:200]
        raise UpstreamError(f"The model '{chat.model}' answered without an image: {shown!r}", code="no_image_returned")
    return urls
