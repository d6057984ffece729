"""One-shot scripted faults any fake upstream can play before its normal answer: `fake.script(Status(503), ...)`."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .httpserver import UpstreamHandler

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Status:
    """Answer HTTP `code` with a JSON body (default `{"detail": "scripted <code>"}`) and extra headers."""

    code: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | str | None = None

    def __post_init__(self) -> None:
        # Accept a dict or any iterable of pairs, but keep a tuple so the step stays immutable.
        pairs = self.headers.items() if isinstance(self.headers, dict) else self.headers
        object.__setattr__(self, "headers", tuple((str(name), str(value)) for name, value in pairs))

    @property
    def name(self) -> str:
        """Return how `served` reports this step, e.g. "status:503"."""
        return f"status:{self.code}"

    def response_headers(self) -> list[tuple[str, str]]:
        """Return the extra headers, with `retry-after` first when set."""
        if self.retry_after is None:
            return list(self.headers)
        value = self.retry_after
        if not isinstance(value, str):
            value = str(int(value)) if float(value).is_integer() else str(value)
        return [("retry-after", value), *self.headers]


@dataclass(frozen=True)
class Refuse:
    """Close the connection without any response (the client sees it reset or closed)."""

    name = "refuse"


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` (cut short if the client hangs up), then answer normally."""

    seconds: float

    name = "delay"


@dataclass(frozen=True)
class Stall:
    """In a chunked answer, go silent for `seconds` after `after_chunks` chunks, or before its end if shorter.

    Answers with a content-length are not affected; the step is still used up.
    """

    after_chunks: int
    seconds: float

    name = "stall"


@dataclass(frozen=True)
class Reset:
    """Cut the connection with a TCP reset (RST, not FIN) part-way through the answer.

    In a chunked answer, before chunk `after_chunks` (or before its end if shorter); in an answer with a
    content-length, after its head and half its body. With `seconds`, go silent that long first (cut short if the
    client hangs up): a peer that hangs, then dies.
    """

    after_chunks: int = 0
    seconds: float = 0.0

    name = "reset"


Step = Status | Refuse | Delay | Stall | Reset
STEP_TYPES = (Status, Refuse, Delay, Stall, Reset)


def check_steps(steps: Iterable[object]) -> list[Step]:
    """Return the steps as a list.

    :raise TypeError: for anything that is not a step instance (a class passed by mistake, say).
    """
    checked = []
    for step in steps:
        if not isinstance(step, STEP_TYPES):
            raise TypeError(f"not a script step: {step!r}")
        checked.append(step)
    return checked


def take_step(queue: list[tuple[str | None, Step]], path: str) -> Step | None:
    """Pop and return the first queued step for `path` (None queues match any path); the caller holds the lock."""
    for index, (wanted, step) in enumerate(queue):
        if wanted is None or wanted == path:
            del queue[index]
            return step
    return None


def play_step(h: UpstreamHandler, step: Step) -> bool:
    """Act out `step` on the request in `h`; return True when it answered, False to go on with normal handling."""
    if isinstance(step, Status):
        body = {"detail": f"scripted {step.code}"} if step.body is None else step.body
        h.send_json(step.code, body, step.response_headers())
        return True
    if isinstance(step, Refuse):
        h.drop_connection()
    if isinstance(step, Delay):
        h.wait(step.seconds)
    if isinstance(step, Stall):
        h.stall = step
    if isinstance(step, Reset):
        _arm_reset(h, step)
    return False


def _arm_reset(h: UpstreamHandler, step: Reset) -> None:
    """Make every way h answers end in a reset; instance attributes shadow the handler's methods for this answer."""
    before_chunk = h.before_chunk

    def chunk_then_reset(index: int) -> None:
        if index >= step.after_chunks:
            _reset(h, step.seconds)
        before_chunk(index)

    def end_with_reset() -> None:
        _reset(h, step.seconds)

    def half_body_then_reset(status: int, body: bytes, content_type: str, headers=()) -> None:
        head = [*headers, ("content-length", str(len(body))), ("content-type", content_type)]
        h.send_head(status, [*head, *h.upstream.extra_headers])
        h.write(body[: len(body) // 2])
        _reset(h, step.seconds)

    # Each path resets, so the shadowing dies with the connection and never reaches a kept-alive next request.
    h.before_chunk, h.end_stream, h.send_body = chunk_then_reset, end_with_reset, half_body_then_reset


def _reset(h: UpstreamHandler, seconds: float) -> None:
    """Wait, then close the socket with SO_LINGER 0 so the kernel sends RST; abandon the handler (never returns)."""
    h.wait(seconds)
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The request reader holds a reference to the socket: release it first, or close() would not close it yet.
    h.rfile.close()
    h.connection.close()
    h.drop_connection()  # its shutdown() of the closed socket fails quietly; it raises to abandon the handler
