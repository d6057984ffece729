"""POST /v1/chat/completions: JSON or SSE, relayed chunk by chunk."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from .. import analytics, request_record, sse
from ..errors import InvalidRequestError
from ..pool_rules import pool_sends, pool_target
from ..providers import get_router
from ..providers.base import ChatRequest, Provider
from ..relay import Opening, relay
from ..session_rules import resolve_model, session_from_headers
from ..shaping import read_shaping, shape_completion
from ..usage import fill_usage
from ..validation import parse_chat_request, read_json_body

bp = Blueprint("chat", __name__)


@bp.post("/chat/completions")
def create_chat_completion():
    """Create a chat completion; stream it as server-sent events when the client asks."""
    chat = parse_chat_request(read_json_body(), current_app.config["GATEWAY_MAX_MESSAGES"])
    shaping = read_shaping(chat.body)  # what the upstreams ignore and the gateway honours itself: 400 if it cannot
    session = session_from_headers()
    target = None if session else pool_target()
    record = request_record.current()
    record.model = chat.model  # the client's name, alias or not: answers and analytics speak of what was asked for
    router = get_router()
    selector = request.headers.get("X-Provider")
    pool = None
    if target is not None:
        # Each member is sent the model as its own map (or GATEWAY_MODEL_ALIASES) says, with its ids, as it is tried.
        plan, pool = router.plan_pool(selector, *target, pool_sends(*target, chat.model))
    else:
        chat.upstream_model, extra = resolve_model(session, chat.model)
        chat.extra.update(extra)
        # Routed by the name the upstream will be asked for: providers list that one, not the client's alias.
        plan = router.plan(
            chat.upstream_model,
            selector,
            session and session.bridge_base_url,
            session is not None,
            session_key=session and session.bridge_api_key,
        )
    # After planning, which consulted the model lists it needed: knowing costs no upstream call. A pool plan means
    # some member accepts the model.
    aliased = pool is not None or chat.upstream_model != chat.model or (session and session.models)
    record.model_known = True if aliased else router.knows(chat.upstream_model)
    if shaping is not None:
        emulate = current_app.config["GATEWAY_TOOL_EMULATION"]
        if shaping.tools is not None and not emulate:
            raise _no_tools(plan)
        chat.body = shaping.upstream_body(chat.body, emulate)
        chat.shaping = shaping if shaping.shapes_answer else None
    dispatcher = router.dispatcher(plan, pool)
    if chat.stream:
        return _stream(Opening(dispatcher, chat, current_app.config["GATEWAY_SSE_KEEPALIVE_SECONDS"]), record)
    try:
        _, completion = dispatcher.complete(chat)
    finally:
        # Failed or not, say who was asked last: the response header, the log line and analytics use it.
        record.served_by(dispatcher.last_provider, dispatcher.attempt_count, dispatcher.last_bridge)
    return _complete(completion, chat, record)


def _complete(data: dict[str, Any], chat: ChatRequest, record: request_record.RequestRecord) -> dict[str, Any]:
    data["model"] = chat.model
    usage, chars = data.get("usage"), None
    if chat.shaping is not None:
        chars = shape_completion(data, chat.shaping.start())
        # The upstream counted what it generated; the client is charged for what it was given.
        usage = {"prompt_tokens": usage.get("prompt_tokens")} if isinstance(usage, dict) else None
    data["usage"] = record.usage = fill_usage(usage, chat.body.get("messages"), chars)
    return data


def _no_tools(plan: list[Provider]) -> InvalidRequestError:
    names = " and ".join(dict.fromkeys(p.label for p in plan)) or "The upstream"
    return InvalidRequestError(
        f"{names} cannot call tools, and tool emulation is off (GATEWAY_TOOL_EMULATION=false): send the request "
        "without 'tools', or turn the emulation on.",
        param="tools",
        code="tools_unsupported",
    )


def _stream(opening: Opening, record: request_record.RequestRecord) -> Response:
    # Work for one keep-alive interval before answering, so a refusal still gets its real HTTP status.
    try:
        if opening.wait_one_interval():
            record.served_by(opening.opened.provider.name, bridge=opening.dispatcher.last_bridge)
    except BaseException:
        record.served_by(opening.dispatcher.last_provider, bridge=opening.dispatcher.last_bridge)
        opening.close()
        raise
    record.stream_started(analytics.recorder())
    return Response(relay(opening, record), headers=sse.HEADERS)
