"""Server-sent event frames as OpenAI streams use them."""

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
