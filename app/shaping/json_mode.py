"""JSON mode for upstreams without it: ask for JSON, pass on only the JSON object, check it at the end."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..errors import InvalidModelOutput, InvalidRequestError

_SHOWN = 200  # characters of the model's text quoted in an error
# What moves the state of a JSON object's outline: braces, and quotes and backslashes for strings.
_SPECIAL = re.compile(r'[{}"\\]')


@dataclass(frozen=True)
class JsonSpec:
    """What response_format asks for: any JSON object, or one valid against a named schema."""

    name: str | None = None
    schema: dict[str, Any] | None = None
    validator: Any = field(default=None, compare=False)


def read_json_mode(body: dict[str, Any]) -> JsonSpec | None:
    """Return what response_format asks for (None for text); raise a 400 for a format or schema not understood."""
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonSpec()
    if kind != "json_schema":
        raise InvalidRequestError(
            '\'response_format.type\' must be "text", "json_object" or "json_schema".', param="response_format.type"
        )
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            "'response_format.json_schema.schema' must be a JSON Schema object.", param="response_format.json_schema"
        )
    # Imported here: only requests with a schema need it, and it costs start-up time every process would pay.
    from jsonschema import Draft202012Validator, SchemaError
    from jsonschema.validators import validator_for

    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
        _check_refs(schema, schema)
    except (SchemaError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"'response_format.json_schema.schema' is not a valid JSON Schema: {getattr(exc, 'message', exc)}",
            param="response_format.json_schema.schema",
        ) from None
    name = spec.get("name")
    return JsonSpec(name if isinstance(name, str) else None, schema, cls(schema))


def _check_refs(node: Any, root: dict[str, Any]) -> None:
    """Raise ValueError for a $ref that does not point into the schema itself: nothing is ever fetched."""
    if isinstance(node, list):
        for item in node:
            _check_refs(item, root)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if ref is not None:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise ValueError(f"$ref {ref!r} is not supported: only references within the schema ('#/...')")
        target: Any = root
        for part in ref.split("/")[1:]:
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and key.isdigit() and int(key) < len(target):
                target = target[int(key)]
            elif isinstance(target, dict) and key in target:
                target = target[key]
            else:
                raise ValueError(f"$ref {ref!r} points to nothing in the schema")
    for key, value in node.items():
        if key not in ("const", "enum", "default", "examples"):  # values, not schemas
            _check_refs(value, root)


def instruction(spec: JsonSpec) -> str:
    """Return the system instruction that asks for the JSON answer."""
    text = "# Answer format\nAnswer with one JSON object and nothing else: no text before or after it, no code fence."
    if spec.schema is not None:
        schema = json.dumps(spec.schema, ensure_ascii=False, separators=(",", ":"))
        text += f"\nThe object must be valid against this JSON Schema:\n{schema}"
    return text


class JsonAnswer:
    """One answer's JSON object: feed() drops what comes before its first `{`, passes the object on as it arrives,
    and is `done` when it closes (what follows is dropped); finish() checks it."""

    def __init__(self, spec: JsonSpec) -> None:
        self.spec = spec
        self.started = False
        self.done = False
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the last piece ended in a string's backslash
        self.parts: list[str] = []
        self.before = ""  # the start of what came before the object, for an error to quote

    def feed(self, text: str) -> str:
        """Return the part of text that belongs to the JSON object."""
        if self.done or not text:
            return ""
        begin = 0
        if not self.started:
            begin = text.find("{")
            if begin < 0:
                if len(self.before) <= _SHOWN:
                    self.before += text
                return ""
            self.started = True
        skip = begin if self.escaped else -1  # the character a backslash at the end of the last piece escapes
        self.escaped = False
        for match in _SPECIAL.finditer(text, begin):
            at, char = match.start(), match.group()
            if at == skip:
                continue
            if self.in_string:
                if char == "\\":
                    skip = at + 1
                    self.escaped = at + 1 == len(text)
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char == "{":
                self.depth += 1
            elif char == "}":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    self.parts.append(text[begin : at + 1])
                    return text[begin : at + 1]
        self.parts.append(text[begin:])
        return text[begin:]

    def finish(self, truncated: bool = False) -> None:
        """Raise InvalidModelOutput unless the answer held one whole JSON object the schema (if any) accepts."""
        text = "".join(self.parts)
        if not self.started:
            raise InvalidModelOutput(f"The model answered without a JSON object: {_quote(self.before)}")
        if not self.done:
            cut = " (the answer reached max_tokens)" if truncated else ""
            raise InvalidModelOutput(f"The model's JSON object is incomplete{cut}: {_quote(text)}")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidModelOutput(f"The model's answer is not valid JSON ({exc}): {_quote(text)}") from None
        if self.spec.validator is None:
            return
        from jsonschema.exceptions import best_match

        try:
            error = best_match(self.spec.validator.iter_errors(value))
        except RecursionError:
            raise InvalidRequestError(
                "'response_format.json_schema.schema' refers to itself without end.",
                param="response_format.json_schema.schema",
            ) from None
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the top level"
            schema = f" {self.spec.name!r}" if self.spec.name else ""
            raise InvalidModelOutput(
                f"The model's JSON does not match the schema{schema}: {error.message} (at {where})"
            )


def _quote(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")
