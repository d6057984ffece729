"""Read tool calls out of a model's text as it arrives: text goes on, <tool_call> blocks become `tool_calls`."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..errors import InvalidModelOutput
from .tool_prompt import CLOSE, OPEN, ToolSpec

_SHOWN = 200  # characters of the model's text quoted in an error


class ToolCalls:
    """One answer's tool calls. feed() returns deltas: text as it comes, held back only from a possible `<tool_call>`
    until it is decided, and each call once its block closes. After a call, anything but another call ends the
    answer (`done`): the model has begun to make up the tool's result."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self.pending = ""  # a possible marker's start, or an open call's text
        self.in_call = False
        self.calls: list[dict[str, Any]] = []
        self.done = False
        self.said = ""  # the start of the answer's text, for an error to quote

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Return the deltas text completes."""
        if self.done:
            return []
        pending = self.pending + text
        out: list[dict[str, Any]] = []
        while not self.done:
            if self.in_call:
                end = pending.find(CLOSE)
                if end < 0:
                    break
                out.append(self._call(pending[:end]))
                pending = pending[end + len(CLOSE) :]
                self.in_call = False
                self.done = not self.spec.parallel
                continue
            start = pending.find(OPEN)
            keep = len(pending) - start if start >= 0 else _marker_start(pending)
            before = pending[: len(pending) - keep]
            self._text(before, out)
            if start < 0 or self.done:
                pending = pending[len(before) :]
                break
            pending = pending[start + len(OPEN) :]
            self.in_call = True
        self.pending = "" if self.done else pending
        return out

    def finish(self, truncated: bool = False) -> list[dict[str, Any]]:
        """Return what was held; raise InvalidModelOutput for a broken call or a call that was required and missing."""
        out: list[dict[str, Any]] = []
        pending, self.pending = self.pending, ""
        if self.in_call:
            # A model may leave the last block unclosed at the end of its answer: the call stands if its JSON is whole.
            try:
                out.append(self._call(pending))
            except InvalidModelOutput as error:
                if not truncated:
                    raise
                raise InvalidModelOutput("The answer reached max_tokens inside a tool call. " + error.message) from None
        elif not self.done:
            self._text(pending, out)
        if not self.calls and self.spec.choice != "auto":
            wanted = f"the tool {self.spec.forced}" if self.spec.forced else 'a tool (tool_choice "required")'
            raise InvalidModelOutput(f"The model was asked to call {wanted} but answered in text: {_quote(self.said)}")
        return out

    def _text(self, text: str, out: list[dict[str, Any]]) -> None:
        if not self.calls:
            if text:
                out.append({"content": text})
                if len(self.said) <= _SHOWN:
                    self.said += text
        elif text.strip():
            self.done = True  # text after a call: nothing after it is the model's to say

    def _call(self, text: str) -> dict[str, Any]:
        """Return the delta of one call from the text of its block."""
        found = _json_object(text)
        if found is None or not isinstance(found.get("name"), str):
            raise InvalidModelOutput(
                f'The model\'s tool call is not {{"name": ..., "arguments": {{...}}}} JSON: {_quote(text)}'
            )
        name = found["name"]
        if name not in self.spec.functions:
            raise InvalidModelOutput(
                f"The model called {name!r}, which is not among the tools offered ({', '.join(self.spec.functions)})."
            )
        arguments = found.get("arguments", found.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        if not isinstance(arguments, dict):
            raise InvalidModelOutput(f"The model's arguments for {name!r} are not a JSON object: {_quote(text)}")
        call = {
            "index": len(self.calls),
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
        }
        self.calls.append(call)
        return {"tool_calls": [call]}


def _marker_start(text: str) -> int:
    """Return the length of the longest tail of text that may still grow into `<tool_call>`."""
    # "<" opens the marker and appears nowhere else in it: only the last "<" can start such a tail.
    at = text.rfind("<", max(0, len(text) - len(OPEN) + 1))
    return len(text) - at if at >= 0 and OPEN.startswith(text[at:]) else 0


def _json_object(text: str) -> dict[str, Any] | None:
    """Return the first JSON object in text (a code fence around it allowed), or None."""
    start = text.find("{")
    for _ in range(3):  # a few tries, not one per brace: the text is the model's and may be long
        if start < 0:
            break
        try:
            found, _ = json.JSONDecoder().raw_decode(text, start)
        except (ValueError, RecursionError):
            found = None
        if isinstance(found, dict):
            return found
        start = text.find("{", start + 1)
    return None


def _quote(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")
