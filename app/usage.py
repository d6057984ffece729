"""Approximate token counts, for upstreams that report none (LMArenaBridge counts len(text)//4 too)."""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Return an approximate token count for a text of this many characters."""
    return -(-chars // CHARS_PER_TOKEN)


def prompt_tokens(messages: Any) -> int:
    """Return an approximate token count of the text in OpenAI messages."""
    chars = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return estimate_tokens(chars)


def fill_usage(usage: Any, messages: Any, completion_chars: int | None = None) -> dict[str, Any]:
    """Return usage with the counts an upstream left out estimated, and total_tokens to match.

    The bridge reports prompt_tokens as 0 and streams no usage at all; an estimate is more useful to clients that
    budget by it. completion_chars (what a stream relayed) stands in for a missing or zero completion count.
    """
    filled = dict(usage) if isinstance(usage, dict) else {}
    prompt = filled.get("prompt_tokens")
    if not isinstance(prompt, int) or not prompt:
        prompt = prompt_tokens(messages)
    completion = filled.get("completion_tokens")
    if completion_chars is not None and (not isinstance(completion, int) or not completion):
        completion = estimate_tokens(completion_chars)
    elif not isinstance(completion, int):
        completion = 0
    filled.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return filled
