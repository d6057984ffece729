"""Server-sent event frames as OpenAI streams use them."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    # nginx/APISIX and Passenger honour this and pass each frame on as it is written.
    "X-Accel-Buffering": "no",
}


def frame(data: str) -> bytes:
    """Return one `data:` frame for an already encoded JSON text."""
    return b"data: " + data.encode("utf-8") + b"\n\n"


def json_frame(obj: Any) -> bytes:
    """Return one `data:` frame holding obj as compact JSON."""
    return frame(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
