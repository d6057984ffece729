"""Check OpenAI request bodies and say precisely what is wrong; unknown fields are tolerated."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flask import request

from .errors import InvalidRequestError, RequestTooLarge
from .providers.base import ChatRequest

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")
# Parts OpenAI defines that neither upstream can carry (LMArena takes text and images): refused, never dropped.
UNCARRIED_PARTS = {"input_audio": "audio", "file": "files"}
MAX_MODEL_LENGTH = 256
MAX_PROMPT_LENGTH = 32000
# The escape of a UTF-16 surrogate (\ud800-\udfff). JSON decodes one without its pair to a lone surrogate: a str no
# UTF-8 writer (the session store, the upstream request, the answer) can encode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def read_json_body(max_bytes: int | None = None) -> dict[str, Any]:
    """Return the request body as a JSON object; bodies over max_bytes (or MAX_CONTENT_LENGTH) are a 413."""
    too_large = f"Request body is too large (at most {max_bytes} bytes)."
    # Content-Length is checked first so an honest oversized body is refused before it is read.
    if max_bytes is not None and (request.content_length or 0) > max_bytes:
        raise RequestTooLarge(too_large)
    raw = request.get_data(cache=False)
    if max_bytes is not None and len(raw) > max_bytes:
        raise RequestTooLarge(too_large)
    if not raw.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}).",
            code="invalid_json",
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("The request body is not valid UTF-8 JSON.", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequestError("The request body is JSON nested too deeply.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    if _holds_lone_surrogate(raw, body):
        raise InvalidRequestError(
            "The request body holds a \\ud800-\\udfff escape without its pair (a lone surrogate), which is not text.",
            code="invalid_json",
        )
    return body


def _holds_lone_surrogate(raw: bytes, body: dict[str, Any]) -> bool:
    # perf: the bytes are searched first (C speed); the whole body is encoded again only when an escape is there, or
    # when it came in UTF-16 or UTF-32, where the escape's bytes differ.
    if json.detect_encoding(raw) == "utf-8" and not _SURROGATE_ESCAPE.search(raw):
        return False
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _fail(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"'{param}' {message}", param=param)


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        str: "a string",
        int: "a number",
        float: "a number",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _string(body: dict, key: str, *, required: bool = False, max_length: int | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _fail(key, "is required.")
        return None
    if not isinstance(value, str):
        raise _fail(key, f"must be a string, not {_type_name(value)}.")
    if required and not value.strip():
        raise _fail(key, "must not be empty.")
    if max_length and len(value) > max_length:
        raise _fail(key, f"must be at most {max_length} characters.")
    return value


def _number(body: dict, key: str, low: float, high: float, *, integer: bool = False) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(key, f"must be {'an integer' if integer else 'a number'}, not {_type_name(value)}.")
    if not low <= value <= high:
        raise _fail(key, f"must be between {low:g} and {high:g}, got {value}.")


def _kind(body: dict, key: str, *types: type) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) and bool not in types or not isinstance(value, types)):
        names = " or ".join(_type_name(t()) for t in types)
        raise _fail(key, f"must be {names}, not {_type_name(value)}.")


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise _fail(where, "must be an object with a 'type'.")
    kind = part.get("type")
    if kind not in PART_TYPES:
        raise _fail(f"{where}.type", f"must be one of {', '.join(PART_TYPES)}; got {kind!r}.")
    if kind in UNCARRIED_PARTS:
        raise InvalidRequestError(
            f"'{where}' is an '{kind}' part: the upstreams take text and images only, not "
            f"{UNCARRIED_PARTS[kind]}; send its content as text, or leave it out.",
            param=f"{where}.type",
            code="unsupported_content",
        )
    if kind == "text" and not isinstance(part.get("text"), str):
        raise _fail(f"{where}.text", "must be a string.")
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, str) and image:
            # Some clients send the URL bare; the upstreams want OpenAI's object.
            image = part["image_url"] = {"url": image}
        if not (isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]):
            raise _fail(f"{where}.image_url", "must be an object with a non-empty 'url'.")


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise _fail(where, f"must be an object with 'role' and 'content', not {_type_name(message)}.")
    role = message.get("role")
    if role not in ROLES:
        raise _fail(f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r}.")
    content = message.get("content")
    if isinstance(content, list):
        if not content and role != "assistant":
            raise _fail(f"{where}.content", "must not be an empty array.")
        for j, part in enumerate(content):
            _check_part(part, f"{where}.content[{j}]")
    elif content is None:
        # An assistant turn that only calls tools carries no content; every other turn must have some.
        if role != "assistant" or not (message.get("tool_calls") or message.get("function_call")):
            raise _fail(f"{where}.content", "is required.")
    elif not isinstance(content, str):
        raise _fail(f"{where}.content", f"must be a string or an array of content parts, not {_type_name(content)}.")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _fail(f"{where}.tool_call_id", "is required for tool messages.")
    _kind(message, "name", str)


def parse_chat_request(body: dict[str, Any], max_messages: int) -> ChatRequest:
    """Return a ChatRequest, or raise InvalidRequestError naming the offending parameter."""
    model = _string(body, "model", required=True, max_length=MAX_MODEL_LENGTH)
    messages = body.get("messages")
    if messages is None:
        raise _fail("messages", "is required.")
    if not isinstance(messages, list):
        raise _fail("messages", f"must be an array of messages, not {_type_name(messages)}.")
    if not messages:
        raise _fail("messages", "must contain at least one message.")
    if len(messages) > max_messages:
        raise _fail("messages", f"must contain at most {max_messages} messages.")
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]")

    _kind(body, "stream", bool)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "max_tokens", 1, 10_000_000, integer=True)
    _number(body, "max_completion_tokens", 1, 10_000_000, integer=True)
    _number(body, "n", 1, 2**31, integer=True)
    if (body.get("n") or 1) > 1:
        raise _fail("n", "must be 1: only n=1 is supported (one answer per request).")
    _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    _kind(body, "stop", str, list)
    stop = body.get("stop")
    if isinstance(stop, list) and (len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise _fail("stop", "must be a string or an array of up to 4 strings.")
    if isinstance(body.get("user"), dict):
        # Some clients send an object (an id and a name); OpenAI wants a string, and the upstreams use neither.
        del body["user"]
    for key, kind in (
        ("user", str),
        ("logprobs", bool),
        ("tools", list),
        ("response_format", dict),
        ("logit_bias", dict),
        ("stream_options", dict),
        ("tool_choice", (str, dict)),
    ):
        _kind(body, key, *(kind if isinstance(kind, tuple) else (kind,)))

    stream = body.get("stream") is True
    options = body.get("stream_options") or {}
    _kind(options, "include_usage", bool)
    # stream_options without stream is an error at OpenAI; clients send it anyway, so it is ignored here.
    return ChatRequest(
        body=body, model=model, stream=stream, include_usage=stream and options.get("include_usage") is True
    )


@dataclass
class ImageRequest:
    prompt: str
    model: str | None
    n: int
    size: str | None
    response_format: str


def parse_image_request(body: dict[str, Any], max_n: int) -> ImageRequest:
    """Return an ImageRequest, or raise InvalidRequestError naming the offending parameter."""
    prompt = _string(body, "prompt", required=True, max_length=MAX_PROMPT_LENGTH)
    model = _string(body, "model", max_length=MAX_MODEL_LENGTH)
    _number(body, "n", 1, max_n, integer=True)
    size = _string(body, "size", max_length=32)
    response_format = _string(body, "response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise _fail("response_format", f"must be 'url' or 'b64_json'; got {response_format!r}.")
    for key in ("quality", "style", "user", "background", "output_format"):
        _kind(body, key, str)
    return ImageRequest(prompt, model or None, body.get("n") or 1, size, response_format)
