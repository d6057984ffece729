"""Reshape what the model says before the client sees it: stop sequences, token limits, emulated tools, JSON mode.

LMArenaBridge and yupp2Api ignore all four, so the gateway honours them itself. A JSON answer's content is fed to a
`Shaper` whole, a stream's piece by piece: feed() returns the deltas that may go out now (holding back only what a
stage has yet to decide), finish() the rest and the finish reason, or raises InvalidModelOutput (in a stream, an
error chunk). `cut` says no more upstream text is wanted: the relay then stops reading and drops the upstream, so
a stop sequence ends the generation instead of waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .json_mode import JsonAnswer, JsonSpec, read_json_mode
from .json_mode import instruction as json_instruction
from .limits import Limits, read_limits
from .tool_calls import ToolCalls
from .tool_prompt import ToolSpec, has_tool_turns, read_tools, render_history
from .tool_prompt import instruction as tools_instruction

# Fields an emulated request must not forward: the upstream would ignore them, or choke on them.
_EMULATED = ("tools", "tool_choice", "parallel_tool_calls", "response_format")


@dataclass(frozen=True)
class Shaping:
    """What a request asks the gateway to enforce on the answer; start() gives an answer its own Shaper."""

    stops: tuple[str, ...] = ()
    max_chars: int | None = None
    tools: ToolSpec | None = None
    json: JsonSpec | None = None

    def start(self) -> Shaper:
        """Return a Shaper for one answer."""
        return Shaper(self)

    def upstream_body(self, body: dict[str, Any], emulate_tools: bool) -> dict[str, Any]:
        """Return the body to send: the instruction as a system turn, tool turns as text, emulated fields dropped."""
        said = [tools_instruction(self.tools)] if self.tools else []
        if self.json:
            said.append(json_instruction(self.json))
        messages = body["messages"]
        if emulate_tools and has_tool_turns(messages):
            messages = render_history(messages)
        if said:
            # After the client's own system turns: its persona stays first, the gateway's rules close the preamble.
            at = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")), 0)
            messages = [*messages[:at], {"role": "system", "content": "\n\n".join(said)}, *messages[at:]]
        dropped = _EMULATED if emulate_tools else ("response_format",)
        sent = {k: v for k, v in body.items() if k not in dropped}
        sent["messages"] = messages
        return sent

    @property
    def shapes_answer(self) -> bool:
        """Return whether answers need a Shaper (a request may only need its history rewritten)."""
        return bool(self.stops or self.max_chars or self.tools or self.json)


def read_shaping(body: dict[str, Any]) -> Shaping | None:
    """Return what a validated body asks the gateway to honour, or None for a request relayed as it is."""
    stops, max_chars = read_limits(body)
    tools = read_tools(body)
    json_spec = read_json_mode(body)
    if not (stops or max_chars or tools or json_spec or body.get("tools") or has_tool_turns(body["messages"])):
        return None
    return Shaping(stops, max_chars, tools, json_spec)


def shape_completion(data: dict[str, Any], shaper: Shaper) -> int:
    """Reshape a `chat.completion`'s answer in place; return the characters of the model's text it kept."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if choice is None:
        choice = {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
        data["choices"] = [choice]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), str) else ""
    shaped, choice["finish_reason"] = shaper.complete(content, choice.get("finish_reason"))
    choice["message"] = {**message, **shaped}
    reasoning = message.get("reasoning_content")
    return shaper.chars + (len(reasoning) if isinstance(reasoning, str) else 0)


class Shaper:
    """One answer on its way to the client, through the stages its request asks for, in order: limits, tools, JSON."""

    def __init__(self, shaping: Shaping) -> None:
        self.limits = Limits(shaping.stops, shaping.max_chars) if shaping.stops or shaping.max_chars else None
        self.tools = ToolCalls(shaping.tools) if shaping.tools else None
        self.json = JsonAnswer(shaping.json) if shaping.json else None
        self.chars = 0  # the model's text kept (what `usage` counts)
        self.cut = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Return the deltas that may go out now that text came."""
        if self.limits is not None:
            text = self.limits.feed(text)
            self.cut = self.limits.reason is not None
        return self._shape(text)

    def finish(self, upstream_reason: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Return the last deltas and the finish reason; raise InvalidModelOutput when the answer cannot stand."""
        deltas = self._shape(self.limits.finish()) if self.limits is not None else []
        truncated = self.limits is not None and self.limits.reason == "length"
        if self.tools is not None:
            deltas += self._json(self.tools.finish(truncated))
            if self.tools.calls:
                return deltas, "tool_calls"
        if self.json is not None:
            self.json.finish(truncated)
        if self.limits is not None and self.limits.reason is not None:
            return deltas, self.limits.reason
        return deltas, upstream_reason or "stop"

    def complete(self, content: str, upstream_reason: str | None) -> tuple[dict[str, Any], str]:
        """Return the message and finish reason of a whole answer."""
        deltas = self.feed(content)
        more, reason = self.finish(upstream_reason)
        text = "".join(d["content"] for d in (*deltas, *more) if "content" in d)
        calls = [
            {k: v for k, v in call.items() if k != "index"}
            for d in (*deltas, *more)
            for call in d.get("tool_calls", ())
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text if text.strip() or not calls else None}
        if calls:
            message["tool_calls"] = calls
        return message, reason

    def _shape(self, text: str) -> list[dict[str, Any]]:
        self.chars += len(text)
        if self.tools is not None:
            deltas = self._json(self.tools.feed(text))
            self.cut = self.cut or self.tools.done
        else:
            deltas = self._json([{"content": text}] if text else [])
        if self.json is not None:
            self.cut = self.cut or self.json.done
        return deltas

    def _json(self, deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pass content deltas through JSON mode (when asked for), and tool calls as they are."""
        if self.json is None:
            return deltas
        kept = []
        for delta in deltas:
            if "content" in delta:
                delta = {"content": self.json.feed(delta["content"])}
                if not delta["content"]:
                    continue
            kept.append(delta)
        return kept
