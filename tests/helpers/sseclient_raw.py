"""A deliberately plain HTTP/1.1 SSE reader for tests that look at bytes, timing and disconnects."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class RawStream:
    status: int
    headers: dict[str, str]
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    raw_body: bytes = b""

    @property
    def data(self) -> list[str]:
        """Return the data of every `data:` frame, in order."""
        return [f.decode()[len("data: ") :].rstrip("\n") for _, f in self.frames if f.startswith(b"data: ")]

    @property
    def comments(self) -> list[bytes]:
        return [f for _, f in self.frames if f.startswith(b":")]

    def json_frames(self) -> list[dict]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]


def open_stream(
    base_url: str, body: dict, headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """POST a chat request and return the connection and the response, headers read."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request(
        "POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json", **headers}
    )
    return conn, conn.getresponse()


def read_frames(
    response: http.client.HTTPResponse, *, limit: int = 2000, deadline: float = 20.0, stop_after: int | None = None
) -> list[tuple[float, bytes]]:
    """Read SSE frames (with their arrival time) until the body ends, stop_after frames, or the deadline."""
    frames: list[tuple[float, bytes]] = []
    buffer = b""
    end = time.monotonic() + deadline
    while len(frames) < limit and time.monotonic() < end:
        piece = response.read1(65536)
        if not piece:
            break
        now = time.monotonic()
        buffer += piece
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            frames.append((now, frame + b"\n\n"))
        if stop_after is not None and len(frames) >= stop_after:
            break
    return frames


def stream_chat(base_url: str, body: dict, headers: dict[str, str]) -> RawStream:
    """POST a chat request and read the whole SSE response."""
    conn, response = open_stream(base_url, body, headers)
    try:
        result = RawStream(response.status, {k.lower(): v for k, v in response.getheaders()})
        if result.headers.get("content-type", "").startswith("text/event-stream"):
            result.frames = read_frames(response)
        else:
            result.raw_body = response.read()
        return result
    finally:
        conn.close()
