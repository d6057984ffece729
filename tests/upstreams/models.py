"""Fake models for the fake upstreams' `model` setting: they answer what the gateway instructed, or ignore it."""

from __future__ import annotations

import json
import re
from typing import Any

_RESULT = re.compile(r"<tool_response[^>]*>\n?(.*?)\n?</tool_response>", re.S)


def text_of(message: dict[str, Any]) -> str:
    """Return a message's text: string content or its text parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def system_text(body: dict[str, Any]) -> str:
    """Return the text of every system turn of a request."""
    return "\n".join(text_of(m) for m in body.get("messages") or () if m.get("role") == "system")


class ToolUser:
    """A model that follows the gateway's tool instruction: it calls each of `calls` ((name, arguments) pairs) that
    the instruction offers, in `<tool_call>` blocks after `preface`, and answers from tool results once it has them.
    Without an instruction it answers `plain`."""

    def __init__(
        self,
        calls: list[tuple[str, dict[str, Any]]],
        *,
        preface: str = "",
        after: str = "",
        plain: str = "I have no tools here.",
    ) -> None:
        self.calls, self.preface, self.after, self.plain = calls, preface, after, plain

    def __call__(self, body: dict[str, Any]) -> str:
        last = text_of((body.get("messages") or [{}])[-1])
        results = _RESULT.findall(last)
        if results:
            return "The tools said: " + "; ".join(r.strip() for r in results)
        instruction = system_text(body)
        if "<tool_call>" not in instruction:
            return self.plain
        blocks = [
            f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"
            for name, arguments in self.calls
            if f"- {name}:" in instruction
        ]
        return self.preface + "\n".join(blocks) + self.after


class JsonWriter:
    """A model that answers a JSON instruction with `answer` (text: prose and fences allowed), and others plainly."""

    def __init__(self, answer: str, plain: str = "Hello in prose.") -> None:
        self.answer, self.plain = answer, plain

    def __call__(self, body: dict[str, Any]) -> str:
        return self.answer if "JSON" in system_text(body) else self.plain
