"""POST /v1/chat/completions: JSON or SSE, relayed chunk by chunk."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request

from .. import sse
from ..errors import NotFoundError
from ..observe import StreamObserver, base_event, recorder
from ..providers.base import ChatRequest
from ..providers.dispatch import Dispatcher
from ..providers.router import get_router
from ..session_rules import session_from_headers
from ..store import Session
from ..streaming import ERROR, OPENED, StreamPump, relay
from ..usage import prompt_tokens
from ..validation import parse_chat_request, read_json_body

bp = Blueprint("chat", __name__)


@bp.post("/chat/completions")
def create_chat_completion():
    """Create a chat completion; stream it as server-sent events when the client asks."""
    chat = parse_chat_request(read_json_body(), current_app.config["GATEWAY_MAX_MESSAGES"])
    session = session_from_headers()
    if session is not None:
        apply_session(chat, session)
    g.model = chat.model
    router = get_router()
    plan = router.plan(
        chat.model, request.headers.get("X-Provider"), session and session.bridge_base_url, session is not None
    )
    dispatcher = router.dispatcher(plan)
    if chat.stream:
        return _stream(dispatcher, chat)
    try:
        provider, completion = dispatcher.complete(chat)
    finally:
        # Failed or not, say who was asked last: the response header, the log line and analytics use it.
        if dispatcher.attempts:
            g.provider, g.attempts = dispatcher.attempts[-1][0], len(dispatcher.attempts)
    return _complete(completion, chat)


def apply_session(chat: ChatRequest, session: Session) -> None:
    """Forward the session's LMArena ids, and hold the model to the session's models map when it has one."""
    chat.extra["session_id"] = session.session_id
    chat.extra["message_id"] = session.message_id
    if session.models:
        if chat.model not in session.models:
            raise NotFoundError(
                f"The model '{chat.model}' is not in session '{session.session_name}' on {session.domain}; "
                f"it serves: {', '.join(sorted(session.models))}.",
                param="model",
                code="model_not_found",
            )
        chat.extra["target_model_id"] = session.models[chat.model]


def _complete(data: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
    data["model"] = chat.model
    usage = data.get("usage")
    # The bridge reports prompt_tokens as 0; an estimate is more useful to clients that budget by it.
    if not isinstance(usage, dict) or not usage.get("prompt_tokens"):
        usage = usage if isinstance(usage, dict) else {}
        prompt = prompt_tokens(chat.body.get("messages"))
        completion = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
        data["usage"] = {
            **usage,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    g.usage = data["usage"]  # for the request's analytics event
    return data


def _stream(dispatcher: Dispatcher, chat: ChatRequest) -> Response:
    keepalive = current_app.config["GATEWAY_SSE_KEEPALIVE_SECONDS"]
    pump = StreamPump(dispatcher, chat)
    # Wait briefly for the upstream's verdict, so a refusal still gets its real HTTP status.
    first = pump.get(keepalive)
    if first is not None and first[0] == ERROR:
        pump.close()
        if dispatcher.attempts:
            g.provider = dispatcher.attempts[-1][0]
        raise first[1]
    if first is not None and first[0] == OPENED:
        g.provider = first[1][0]
    observer = StreamObserver(recorder(), base_event(), g.started)
    return Response(relay(pump, first, chat, keepalive, observer), headers=sse.HEADERS)
