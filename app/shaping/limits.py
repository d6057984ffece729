"""Cut an answer at the client's stop sequences and token limit, whatever way the upstream splits its text."""

from __future__ import annotations

from typing import Any

from ..usage import CHARS_PER_TOKEN


class Limits:
    """One answer's stop sequences and character budget: feed() passes on what is certain, holding back only a tail
    that may still become a stop sequence (never more than the longest one less a character).

    A budget of max_tokens is max_tokens * CHARS_PER_TOKEN characters: the estimate `usage` reports then never goes
    past max_tokens.
    """

    def __init__(self, stops: tuple[str, ...], max_chars: int | None) -> None:
        self.stops = stops
        self.longest = max(map(len, stops), default=0)
        self.firsts = frozenset(s[0] for s in stops)
        self.room = max_chars
        self.used = 0  # characters passed on
        self.held = ""
        self.reason: str | None = None  # "stop" or "length" once the answer is cut

    def feed(self, text: str) -> str:
        """Return the part of text (after what was held) that may go out now."""
        if self.reason is not None:
            return ""
        if self.stops:
            text = self.held + text
            at = -1
            for stop in self.stops:
                found = text.find(stop)
                if found >= 0 and (at < 0 or found < at):
                    at = found
            keep = self._stop_start(text)
            if at >= 0 and not (keep and len(text) - keep < at):
                self.held = ""
                return self._pass(text[:at], "stop")
            # No stop yet, or a longer one that begins earlier may still complete: hold the tail it would begin.
            self.held = text[len(text) - keep :] if keep else ""
            if keep:
                text = text[: len(text) - keep]
        return self._pass(text)

    def finish(self) -> str:
        """Return what was held back: at the end of the answer it can no longer become a stop sequence."""
        held, self.held = self.held, ""
        return self._pass(held) if self.reason is None else ""

    def _stop_start(self, text: str) -> int:
        """Return the length of the longest tail of text that begins some stop sequence."""
        start = max(0, len(text) - self.longest + 1)
        for i in range(start, len(text)):
            if text[i] in self.firsts:
                tail = text[i:]
                if any(stop.startswith(tail) for stop in self.stops):
                    return len(text) - i
        return 0

    def _pass(self, text: str, reason: str | None = None) -> str:
        if self.room is not None and len(text) > self.room - self.used:
            text, reason = text[: self.room - self.used], "length"
        self.used += len(text)
        if reason is not None:
            self.reason = reason
        return text


def read_limits(body: dict[str, Any]) -> tuple[tuple[str, ...], int | None]:
    """Return the stop sequences and character budget a (validated) request body sets: ((), None) for none."""
    stop = body.get("stop")
    stops = tuple(dict.fromkeys(s for s in ([stop] if isinstance(stop, str) else stop or ()) if s))
    # max_completion_tokens is OpenAI's newer name; a client that sends both means the newer one.
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return stops, max_tokens * CHARS_PER_TOKEN if max_tokens else None
