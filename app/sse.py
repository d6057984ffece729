"""Server-sent events as OpenAI streams use them: frames written to clients, events read from upstreams."""

from __future__ import annotations

import json
import re
from typing import Any

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx/APISIX and Passenger honour this and pass each frame on as it is written.
    "X-Accel-Buffering": "no",
}

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def frame(data: str) -> bytes:
    """Return one `data:` frame for an already encoded JSON text."""
    raw = data.encode("utf-8")
    if b"\n" in raw or b"\r" in raw:
        # JSON may hold line breaks as whitespace (an upstream's multi-line `data:` event arrives joined by \n);
        # written raw they would end the event early, so each line gets its own `data:` field.
        raw = b"\ndata: ".join(_LINE_BREAK.split(raw))
    return b"data: " + raw + b"\n\n"


def json_frame(obj: Any) -> bytes:
    """Return one `data:` frame holding obj as compact JSON."""
    return frame(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


class EventTooLarge(ValueError):
    """An event grew past the reader's limit without ending."""


class EventReader:
    """Turn bytes, cut anywhere, into the data of each complete event (the WHATWG rules for `data:` fields).

    Fed rather than pulling from a socket, so a relay can wait for the socket itself and write keep-alives
    between reads. Only `data` fields matter to OpenAI streams; comments, `event`, `id` and `retry` are skipped.
    """

    def __init__(self, max_event: int | None = None) -> None:
        self.max_event = max_event
        self._line = b""  # an unfinished line
        self._after_cr = False  # the last piece ended in \r: a \n starting the next one is the rest of \r\n
        self._data: list[bytes] = []  # the data fields of the open event
        self._size = 0  # bytes of the open event so far

    def feed(self, piece: bytes) -> list[str]:
        """Return the data of each event that piece completes; raise EventTooLarge or UnicodeDecodeError."""
        if self._after_cr:
            self._after_cr = False
            if piece[:1] == b"\n":
                piece = piece[1:]
        if not self._line and not self._data and piece[:6] == b"data: " and piece.find(b"\n") == len(piece) - 2:
            # perf: one whole `data:` event per read is how both upstreams send; skipping the line loop keeps the
            # parse cost per chunk near a bare relay's (bench/README.md, stream CPU per chunk).
            if piece[-2:] == b"\n\n" and b"\r" not in piece:
                return [piece[6:-2].decode("utf-8")]
        text = self._line + piece
        self._after_cr = text[-1:] == b"\r"
        lines = _LINE_BREAK.split(text)
        self._line = lines.pop()
        events = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8"))
                self._data, self._size = [], 0
                continue
            self._size += len(line) + 1
            name, colon, value = line.partition(b":")
            if name == b"data" and colon:
                self._data.append(value[1:] if value[:1] == b" " else value)
            elif name == b"data":
                self._data.append(b"")
        if self.max_event is not None and self._size + len(self._line) > self.max_event:
            raise EventTooLarge(self.max_event)
        return events
