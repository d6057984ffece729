"""Helpers to replay a recorded capture against a fake upstream and read back what it sent, piece by piece."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from .captures import Capture, capture_paths, load_capture

CREATED = re.compile(rb'("created": ?)(\d+)')


def normalise(body: bytes, response_id: re.Pattern[bytes]) -> bytes:
    """Blank out what differs from run to run: response ids and `created` timestamps."""
    return CREATED.sub(rb"\g<1>0", response_id.sub(b"chatcmpl-ID", body))


def capture_names(prefix: str) -> list[str]:
    """Return the capture names with `prefix`, or one placeholder so a missing folder fails instead of skipping."""
    try:
        return [path.stem for path in capture_paths(prefix)]
    except FileNotFoundError:
        return [f"{prefix}captures_missing"]


def find_capture(prefix: str, name: str) -> Capture:
    """Load a capture by name, failing the test clearly when the folder is missing."""
    try:
        paths = {path.stem: path for path in capture_paths(prefix)}
    except FileNotFoundError as exc:
        pytest.fail(f"upstream captures are required: {exc}")
    return load_capture(paths[name])


def read_pieces(resp: requests.Response) -> Iterator[tuple[float, bytes]]:
    """Yield (monotonic time, bytes) per HTTP chunk, or the whole body once when it has a content-length."""
    if resp.headers.get("transfer-encoding") == "chunked":
        for chunk in resp.raw.read_chunked(decode_content=False):
            yield time.monotonic(), chunk
    else:
        yield time.monotonic(), resp.raw.read(decode_content=False)


@dataclass(frozen=True)
class Replayed:
    """What a fake answered to a capture's request: status, headers but `date` (lowercased, in order), pieces."""

    status: int
    headers: list[tuple[str, str]]
    pieces: list[tuple[float, bytes]]
    started: float

    @property
    def body(self) -> bytes:
        """Return the body bytes, pieces joined."""
        return b"".join(chunk for _, chunk in self.pieces)


def replay(base_url: str, capture: Capture) -> Replayed:
    """Send the capture's request, verbatim, to `base_url` and read the whole answer."""
    started = time.monotonic()
    with requests.request(
        capture.method,
        base_url + capture.path,
        headers=capture.request_headers,
        data=capture.request_body,
        stream=True,
        timeout=5,
    ) as resp:
        pieces = list(read_pieces(resp))
        headers = [(key.lower(), value) for key, value in resp.raw.headers.items() if key.lower() != "date"]
    return Replayed(resp.status_code, headers, pieces, started)
