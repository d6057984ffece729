"""Tool calling for upstreams without it: the tools a request offers, told to the model, and tool turns as text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 128  # OpenAI's own limit
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ToolSpec:
    """The functions a request offers and what it asks of the model: choice is "auto", "required" or "forced"."""

    functions: dict[str, dict[str, Any]]
    choice: str = "auto"
    forced: str | None = None
    parallel: bool = True


def read_tools(body: dict[str, Any]) -> ToolSpec | None:
    """Return the tools the model may call, or None (none offered, or tool_choice "none"); raise a 400 naming the
    field that cannot be honoured."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequestError("'parallel_tool_calls' must be a boolean.", param="parallel_tool_calls")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"'tools' must hold at most {MAX_TOOLS} tools.", param="tools")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = _function(tool, f"tools[{i}]")
        if function["name"] in functions:
            raise InvalidRequestError(f"'tools' names {function['name']!r} twice.", param=f"tools[{i}].function.name")
        functions[function["name"]] = function
    if choice in (None, "auto", "none", "required"):
        if choice == "required" and not functions:
            raise InvalidRequestError("'tool_choice' \"required\" needs 'tools'.", param="tool_choice")
        if choice == "none" or not functions:
            return None
        return ToolSpec(functions, choice or "auto", None, parallel is not False)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(name, str)):
        raise InvalidRequestError(
            '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    if name not in functions:
        raise InvalidRequestError(f"'tool_choice' names {name!r}, which is not in 'tools'.", param="tool_choice")
    return ToolSpec({name: functions[name]}, "forced", name, parallel is not False)


def _function(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise InvalidRequestError(
            f'\'{where}\' must be {{"type": "function", "function": {{...}}}}: only function tools can be called '
            "through this gateway.",
            param=f"{where}.type",
        )
    function = tool["function"]
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'.", param=f"{where}.function.name"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(f"'{where}.function.description' must be a string.", param=f"{where}.function")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequestError(f"'{where}.function.parameters' must be an object.", param=f"{where}.function")
    return {"name": name, "description": description or "", "parameters": parameters or {"type": "object"}}


def instruction(spec: ToolSpec) -> str:
    """Return the system instruction that describes the tools and the one way to call them."""
    lines = ["# Tools", "You can call these tools (name: what it does; its arguments as JSON Schema):"]
    for f in spec.functions.values():
        schema = json.dumps(f["parameters"], ensure_ascii=False, separators=(",", ":"))
        lines.append(f"- {f['name']}: {f['description'] or '(no description)'} Arguments: {schema}")
    lines += [
        "To call a tool, write exactly this, with the arguments as a JSON object:",
        OPEN,
        '{"name": "TOOL_NAME", "arguments": {...}}',
        CLOSE,
        "Write one such block per call and nothing after the last one."
        if spec.parallel
        else "Call one tool at a time, and write nothing after it.",
        "Tool results come back in <tool_response> blocks; then answer, or call a tool again.",
        {
            "auto": "Call a tool only when you need one; otherwise answer normally, without any tool_call block.",
            "required": "You must call at least one tool now.",
            "forced": f"You must call the tool {spec.forced} now.",
        }[spec.choice],
    ]
    return "\n".join(lines)


def has_tool_turns(messages: list[Any]) -> bool:
    """Return whether a history holds turns an upstream without tools cannot carry (results, assistant calls)."""
    return any(
        m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call")
        for m in messages
        if isinstance(m, dict)
    )


def render_history(messages: list[Any]) -> list[Any]:
    """Return messages with tool calls written as <tool_call> blocks and tool results as user <tool_response> turns."""
    names: dict[str, str] = {}  # tool_call_id -> the function it called, for results that do not say
    rendered: list[Any] = []
    results: dict[str, Any] | None = None  # the user turn that gathers consecutive results
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("tool", "function"):
            call_id = message.get("tool_call_id")
            name = message.get("name") or (names.get(call_id) if isinstance(call_id, str) else None) or "tool"
            block = f'<tool_response name="{_UNSAFE.sub("_", str(name))}">\n{text_of(message)}\n</tool_response>'
            if results is None:
                results = {"role": "user", "content": block}
                rendered.append(results)
            else:
                results["content"] += "\n" + block
            continue
        results = None
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            calls = message.get("tool_calls") or [{"function": message["function_call"]}]
            blocks = [text_of(message)] if text_of(message) else []
            for call in calls if isinstance(calls, list) else ():
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                if isinstance(call.get("id"), str):
                    names[call["id"]] = str(function.get("name"))
                call_json = json.dumps({"name": function.get("name"), "arguments": _arguments(function)})
                blocks.append(f"{OPEN}\n{call_json}\n{CLOSE}")
            kept = {k: v for k, v in message.items() if k not in ("tool_calls", "function_call")}
            rendered.append({**kept, "content": "\n".join(blocks)})
            continue
        rendered.append(message)
    return rendered


def text_of(message: dict[str, Any]) -> str:
    """Return the text of a message's content, a string or text parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def _arguments(function: dict[str, Any]) -> Any:
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}
