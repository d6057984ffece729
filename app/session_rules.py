"""Named sessions: what a valid one looks like, which one a /v1 request asks for, and which model it sends."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from flask import current_app, request

from . import request_record
from .config import split_url
from .errors import InvalidRequestError, NotFoundError
from .providers import get_router
from .providers.lmarena_bridge import LMArenaBridge
from .store import Session, get_store
from .store.base import utcnow

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_MODELS = 500
MAX_MODEL_NAME = 256
MAX_URL = 2048
# A models.json value: a UUID or "null", maybe with a type suffix (":image"). Maps stored before models maps named
# bridge models hold these; any other value is a model name the bridge knows.
LMARENA_ID = re.compile(r"(?:[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}|null)(?::[A-Za-z]+)?")
# Sent in an HTTP header: printable ASCII, no spaces.
BRIDGE_KEY = re.compile(r"[!-~]{1,512}")
# Where a userscript took the ids from: a user's Retry click, or a job the bridge's own tab ran.
IDS_SOURCES = ("retry", "bridge_job")


def _bad(param: str, message: str, value: Any = None, code: str = "invalid_request") -> InvalidRequestError:
    if value is not None:
        shown = value if isinstance(value, str) else repr(value)
        message += f"; got {shown[:80]!r}" + ("..." if len(shown) > 80 else "")
    return InvalidRequestError(f"'{param}' {message}.", param=param, code=code)


def check_name(value: Any, param: str = "session_name") -> str:
    """Return a valid session name: 1-64 letters, digits, '.', '_' or '-', not only dots."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or not value.strip("."):
        raise _bad(param, "must be 1-64 characters of letters, digits, '.', '_' or '-'", value, "invalid_session_name")
    return value


def check_pool(value: Any) -> str | None:
    """Return a pool name (the same characters as a session name), or None when absent."""
    return None if value in (None, "") else check_name(value, "pool")


def check_domain(value: Any, param: str = "domain") -> str:
    """Return one of the configured LMArena domains."""
    domains = current_app.config["GATEWAY_SESSION_DOMAINS"]
    domain = value.strip().lower() if isinstance(value, str) else None
    if domain not in domains:
        raise _bad(param, f"must be one of {', '.join(domains)}", value, "invalid_domain")
    return domain


def check_uuid(value: Any, param: str) -> str:
    """Return an LMArena id: a UUID, in its canonical lowercase form."""
    try:
        parsed = uuid.UUID(value) if isinstance(value, str) and len(value) == 36 else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _bad(param, "must be a UUID like 3fa85f64-5717-4562-b3fc-2c963f66afa6", value)
    return str(parsed)


def check_base_url(value: Any) -> str | None:
    """Return a bridge base URL (http or https, no /v1), or None when absent."""
    if value in (None, ""):
        return None
    try:
        # A bad port or host is refused here rather than on the session's next chat.
        parts = split_url(value) if isinstance(value, str) and len(value) <= MAX_URL else None
    except ValueError:  # an unclosed IPv6 bracket, for one
        parts = None
    if (
        parts is None
        # urlsplit quietly drops tabs and line breaks; the HTTP client would refuse them (or any control character).
        or not value.isprintable()
        or any(c.isspace() for c in value)
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username
        or parts.password
    ):
        raise _bad("bridge_base_url", "must be an http:// or https:// URL without user:password or query", value)
    url = value.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def is_lmarena_id(value: str) -> bool:
    """Return whether a models map value is an LMArena model id (models.json's format) rather than a model name."""
    return LMARENA_ID.fullmatch(value) is not None


def check_bridge_key(value: Any) -> str | None:
    """Return the api_key the session's bridge wants, or None (null or "": none, LMARENA_BRIDGE_API_KEY applies)."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not BRIDGE_KEY.fullmatch(value):
        # The value is a secret: unlike the other fields' errors, this one does not echo it.
        raise _bad("bridge_api_key", "must be 1-512 printable ASCII characters without spaces")
    return value


def check_models(value: Any) -> dict[str, str]:
    """Return a models map: client model name -> bridge model name, or LMArena model id as in models.json."""
    if value in (None, {}):
        return {}
    if not isinstance(value, dict) or len(value) > MAX_MODELS:
        raise _bad("models", f"must be an object of at most {MAX_MODELS} model name -> bridge model name or id")
    for name, target in value.items():
        for text in (name, target):
            if not isinstance(text, str) or not text or len(text) > MAX_MODEL_NAME or not text.isprintable():
                raise _bad(
                    "models",
                    f"must map model names to bridge model names or LMArena ids, each 1-{MAX_MODEL_NAME} printable "
                    "characters",
                    name,
                )
    return dict(value)


def check_ids_source(value: Any) -> str | None:
    """Return where the ids came from ("retry" or "bridge_job"), or None when absent or null."""
    if value is None:
        return None
    if value not in IDS_SOURCES:
        raise _bad("ids_source", f"must be one of {', '.join(IDS_SOURCES)} or null", value)
    return value


def parse_registration(body: dict[str, Any]) -> Session:
    """Return the Session a registration body describes, or raise InvalidRequestError."""
    return Session(
        domain=check_domain(body.get("domain")),
        session_name=check_name(body.get("session_name")),
        session_id=check_uuid(body.get("session_id"), "session_id"),
        message_id=check_uuid(body.get("message_id"), "message_id"),
        bridge_base_url=check_base_url(body.get("bridge_base_url")),
        bridge_api_key=check_bridge_key(body.get("bridge_api_key")),
        models=check_models(body.get("models")),
        pool=check_pool(body.get("pool")),
        ids_source=check_ids_source(body.get("ids_source")),
    )


def active_since():
    """Return the moment after which a heartbeat makes a session count as active."""
    return utcnow() - timedelta(seconds=current_app.config["GATEWAY_SESSION_ACTIVE_SECONDS"])


def to_api(session: Session) -> dict[str, Any]:
    """Return a session as the API shows it."""
    return {**session.to_dict(), "active": session.seen_since(active_since())}


def session_from_headers() -> Session | None:
    """Return the session named by X-Session-Name (+ X-Target-Domain, default the first domain), or None."""
    name = request.headers.get("X-Session-Name")
    domain = request.headers.get("X-Target-Domain")
    if name is None:
        if domain is not None and request.headers.get("X-Session-Pool") is None:
            raise InvalidRequestError("X-Target-Domain needs X-Session-Name or X-Session-Pool.", param="X-Session-Name")
        return None
    name = check_name(name, "X-Session-Name")
    domain = check_domain(domain, "X-Target-Domain") if domain else current_app.config["GATEWAY_SESSION_DOMAINS"][0]
    session = get_store().find(domain, name)
    if session is None:
        raise NotFoundError(
            f"No session '{name}' on {domain}. Register it first (POST /session/register or the userscript).",
            param="X-Session-Name",
            code="session_not_found",
        )
    record = request_record.current()
    record.domain, record.session_name = domain, name
    return session


def resolve_model(session: Session | None, model: str) -> tuple[str, dict[str, str]]:
    """Return the model name to send upstream for the one a client asked for, and the fields to add to the body.

    A session adds its LMArena ids, and its models map, when it has one, decides alone (a name it lacks is a 404):
    a bridge model name replaces the client's, an LMArena id goes as `target_model_id` with the name unchanged.
    Otherwise GATEWAY_MODEL_ALIASES may give another name.
    """
    resolved = model_for(session, model)
    if resolved is not None:
        return resolved
    # Only a session's models map refuses a name.
    raise NotFoundError(
        f"The model '{model}' is not in session '{session.session_name}' on {session.domain}; "
        f"it serves: {', '.join(sorted(session.models))}.",
        param="model",
        code="model_not_found",
    )


def bridge_of(session: Session) -> LMArenaBridge:
    """Return the bridge a session is bound to (its bridge_base_url and key, else the configured bridge)."""
    return get_router().bridge_for(session.bridge_base_url, session.bridge_api_key)


def model_for(session: Session | None, model: str) -> tuple[str, dict[str, str]] | None:
    """Return resolve_model's answer, or None when the session's models map lacks model (a pool skips it)."""
    aliases = current_app.config["GATEWAY_MODEL_ALIASES"]
    if session is None:
        return aliases.get(model, model), {}
    extra = {"session_id": session.session_id, "message_id": session.message_id}
    if not session.models:
        return aliases.get(model, model), extra
    target = session.models.get(model)
    if target is None:
        return None
    if is_lmarena_id(target):
        extra["target_model_id"] = target
        return model, extra
    return target, extra
