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
