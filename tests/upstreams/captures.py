"""Read the recorded upstream exchanges in tests/upstreams/captures (sections request, response, timing, body)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "UPSTREAM_CAPTURES_DIR"
BODY_MARK = b"\n## body\n"


@dataclass(frozen=True)
class Capture:
    """One recorded HTTP exchange with a real upstream."""

    name: str
    request_line: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    headers_after: float
    pieces: list[tuple[float, int]]
    body: bytes

    @property
    def method(self) -> str:
        """Return the request method."""
        return self.request_line.split(" ")[0]

    @property
    def path(self) -> str:
        """Return the request target."""
        return self.request_line.split(" ")[1]


def captures_dir() -> Path:
    """Return the captures folder: $UPSTREAM_CAPTURES_DIR, else the copy kept beside this module."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    # Real exchanges recorded with LMArenaBridge and yupp2Api, kept here so a fresh clone runs the whole suite;
    # point UPSTREAM_CAPTURES_DIR at another recording to check the fakes against it.
    return Path(__file__).resolve().parent / "captures"


def capture_paths(prefix: str) -> list[Path]:
    """Return the capture files whose name starts with `prefix`, sorted.

    :raise FileNotFoundError: if the folder is missing or holds no such capture.
    """
    folder = captures_dir()
    paths = sorted(folder.glob(f"{prefix}*.txt")) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no {prefix}*.txt captures in {folder}; set {ENV_VAR} to the captures folder")
    return paths


def _sections(text: str) -> dict[str, tuple[str, str]]:
    """Split the text before the body into {name: (rest of the heading line, content)}."""
    found = list(re.finditer(r"^## (\w+)(.*)\n", text, re.MULTILINE))
    ends = [m.start() for m in found[1:]] + [len(text)]
    return {m.group(1): (m.group(2), text[m.end() : end]) for m, end in zip(found, ends, strict=True)}


def _headers(lines: list[str], *, lower: bool) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in lines if line)
    return {(name.lower() if lower else name): value.strip() for name, value in pairs}


def load_capture(path: Path) -> Capture:
    """Parse one capture file; the body is every byte after the `## body` line."""
    raw = path.read_bytes()
    head, mark, body = raw.partition(BODY_MARK)
    if not mark:
        raise ValueError(f"{path}: no '## body' section")
    sections = _sections(head.decode() + "\n")
    request_head, _, request_rest = sections["request"][1].partition("\n\n")
    request_line, *request_header_lines = request_head.split("\n")
    response_lines = sections["response"][1].strip("\n").split("\n")
    timing_heading, timing_text = sections["timing"]
    headers_after = re.search(r"headers after ([\d.]+)s", timing_heading)
    pieces = [(float(t), int(n)) for t, n in re.findall(r"^\+([\d.]+) (\d+)$", timing_text, re.MULTILINE)]
    return Capture(
        name=path.stem,
        request_line=request_line,
        request_headers=_headers(request_header_lines, lower=False),
        request_body=request_rest.removesuffix("\n\n").encode(),
        status=int(response_lines[0].split(" ")[1]),
        response_headers=_headers(response_lines[1:], lower=True),
        headers_after=float(headers_after.group(1)) if headers_after else 0.0,
        pieces=pieces,
        body=body,
    )
