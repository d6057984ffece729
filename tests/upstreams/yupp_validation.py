"""The 422 `detail` FastAPI (pydantic 2.5) gives for a bad yupp2Api chat body, built without either library."""

from __future__ import annotations

from typing import Any

# The captured server ran pydantic 2.5, which puts this link in each validation error.
PYDANTIC_URL = "https://errors.pydantic.dev/2.5/v/"
TRUE_WORDS = {"1", "on", "t", "true", "y", "yes"}
FALSE_WORDS = {"0", "off", "f", "false", "n", "no"}


def _error(kind: str, loc: list[Any], msg: str, value: Any) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value, "url": PYDANTIC_URL + kind}


def _string_errors(obj: dict[str, Any], key: str, loc: list[Any]) -> list[dict[str, Any]]:
    if key not in obj:
        return [_error("missing", [*loc, key], "Field required", obj)]
    if not isinstance(obj[key], str):
        return [_error("string_type", [*loc, key], "Input should be a valid string", obj[key])]
    return []


def _content_errors(message: dict[str, Any], loc: list[Any]) -> list[dict[str, Any]]:
    """Check `content: str | list[dict]` the way pydantic reports a failed union: one error per branch."""
    if "content" not in message:
        return [_error("missing", [*loc, "content"], "Field required", message)]
    content = message["content"]
    if isinstance(content, str):
        return []
    branch = [*loc, "content", "list[dict[str,any]]"]
    if isinstance(content, list):
        errors = [
            _error("dict_type", [*branch, i], "Input should be a valid dictionary", part)
            for i, part in enumerate(content)
            if not isinstance(part, dict)
        ]
    else:
        errors = [_error("list_type", branch, "Input should be a valid list", content)]
    if not errors:
        return []
    return [_error("string_type", [*loc, "content", "str"], "Input should be a valid string", content), *errors]


def _bool_errors(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Accept what pydantic's lax bool accepts: true/false, 0/1 and words like "yes" or "OFF"."""
    value = body.get(key, True)
    if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
        return []
    if isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS:
        return []
    if isinstance(value, str | int) or (isinstance(value, float) and value.is_integer()):
        return [_error("bool_parsing", [key], "Input should be a valid boolean, unable to interpret input", value)]
    return [_error("bool_type", [key], "Input should be a valid boolean", value)]


def validation_errors(body: Any) -> list[dict[str, Any]]:
    """Return FastAPI's 422 `detail` for a chat body (model, messages, stream), empty when it is valid."""
    if body is None:
        return [_error("missing", [], "Field required", None)]
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return [_error("model_attributes_type", [], msg, body)]
    errors = _string_errors(body, "model", [])
    messages = body.get("messages")
    if "messages" not in body:
        errors.append(_error("missing", ["messages"], "Field required", body))
    elif not isinstance(messages, list):
        errors.append(_error("list_type", ["messages"], "Input should be a valid list", messages))
    else:
        for i, message in enumerate(messages):
            loc = ["messages", i]
            if not isinstance(message, dict):
                msg = "Input should be a valid dictionary or object to extract fields from"
                errors.append(_error("model_attributes_type", loc, msg, message))
                continue
            errors += _string_errors(message, "role", loc) + _content_errors(message, loc)
            if message.get("reasoning_content") is not None:
                errors += _string_errors(message, "reasoning_content", loc)
    return errors + _bool_errors(body, "stream")


def wants_stream(value: Any) -> bool:
    """Read an already validated `stream` (omitted means true on this upstream)."""
    return value.lower() in TRUE_WORDS if isinstance(value, str) else bool(value)
