"""A closed-loop HTTP/1.1 keep-alive load client (asyncio, raw sockets) that timestamps every body chunk.

One coroutine per connection sends a request, reads the whole answer, and sends the next, until the deadline.
Only requests that start after the warm-up and end before the deadline count. For streams it records the time to
the first content chunk (the first `bnch` marker, not the headers, nor a relay's empty role chunk) and, for the
mock's paced model, each chunk's delay from the mock's send stamp to its arrival here (both `time.monotonic_ns()`).

Run: `python bench/loadgen.py --port P --path /v1/chat/completions --key K --model bench --stream -c 8 -d 5`;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import re
import sys
import time

MARKER = re.compile(rb"bnch(\d+)")
REQUEST_TIMEOUT = 60.0
MAX_REQUESTS_PER_CONNECTION = 1_000_000  # a bound for the loop; the clock ends it long before


class Result:
    """What one run saw: completed requests (start, end, first content) and paced chunk delays, in ns."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.ttfbs: list[int] = []
        self.chunk_delays: list[int] = []
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.total = 0  # every completed request, warm-up included (for CPU per request)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def build_request(args: argparse.Namespace) -> bytes:
    """Return the request bytes sent again and again on each connection."""
    body = json.dumps(
        {"model": args.model, "messages": [{"role": "user", "content": "Say hello"}], "stream": args.stream},
        separators=(",", ":"),
    ).encode()
    headers = [
        f"POST {args.path} HTTP/1.1",
        f"Host: 127.0.0.1:{args.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"Authorization: Bearer {args.key}",
        *args.header,
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class ClosedUnanswered(Exception):
    """The server closed the connection before sending one byte of its answer."""


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, list[tuple[int, int]], bool]:
    """Read one response; return status, body, [(arrival ns, body length so far)] per piece, and keep-alive."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ClosedUnanswered from None
        raise
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    keep = fields.get("connection") != "close"
    body = bytearray()
    marks: list[tuple[int, int]] = []
    if "chunked" in fields.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                    pass
                break
            body += (await reader.readexactly(size + 2))[:-2]
            marks.append((time.monotonic_ns(), len(body)))
    elif "content-length" in fields:
        body += await reader.readexactly(int(fields["content-length"]))
        marks.append((time.monotonic_ns(), len(body)))
    else:  # delimited by the end of the connection
        keep = False
        while piece := await reader.read(65536):
            body += piece
            marks.append((time.monotonic_ns(), len(body)))
    return status, bytes(body), marks, keep


def arrival(marks: list[tuple[int, int]], offset: int) -> int:
    """Return when the body byte at offset arrived."""
    ends = [length for _, length in marks]
    return marks[min(bisect.bisect_right(ends, offset), len(marks) - 1)][0]


async def connection(args, request: bytes, measure_from: int, stop_at: int, result: Result) -> None:
    """Send requests on one keep-alive connection (reconnecting when the server closes it) until stop_at."""
    writer = None
    answered = 0  # answers on the current connection
    try:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            if time.monotonic_ns() >= stop_at:
                return
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                answered = 0
            started = time.monotonic_ns()
            writer.write(request)
            try:
                status, body, marks, keep = await asyncio.wait_for(read_answer(reader), REQUEST_TIMEOUT)
                answered += 1
            except ClosedUnanswered:
                # On a reused connection this is the keep-alive race (the server closed it as the request left),
                # which HTTP clients retry; on a fresh one the server refused to answer at all.
                result.error("closed a kept-alive connection unanswered" if answered else "closed unanswered")
                writer.close()
                writer = None
                continue
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
                result.error(type(exc).__name__)
                writer.close()
                writer = None
                await asyncio.sleep(0.01)  # a refusing server must not turn this into a busy loop
                continue
            ended = marks[-1][0] if marks else time.monotonic_ns()
            result.total += 1
            if not keep:
                writer.close()
                writer = None
            if started < measure_from or ended > stop_at:
                continue
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status != 200:
                result.error(f"status {status}")
                continue
            result.latencies.append(ended - started)
            if args.stream:
                found = list(MARKER.finditer(body))
                if not found or not body.rstrip().endswith(b"data: [DONE]"):
                    result.error("stream without content or [DONE]")
                    continue
                result.ttfbs.append(arrival(marks, found[0].end() - 1) - started)
                if args.paced:
                    result.chunk_delays += [arrival(marks, m.end() - 1) - int(m.group(1)) for m in found]
    finally:
        if writer is not None:
            writer.close()


def percentiles(values: list[int], scale: float = 1e-6) -> dict[str, float] | None:
    """Return p50/p95/p99/max/mean of ns values, in ms (nearest-rank)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] * scale

    return {
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "max": ordered[-1] * scale,
        "mean": sum(ordered) / len(ordered) * scale,
        "n": len(ordered),
    }


async def run(args: argparse.Namespace) -> dict:
    """Drive the load and return the figures."""
    request = build_request(args)
    result = Result()
    begin = time.monotonic_ns()
    measure_from = begin + int(args.warmup * 1e9)
    stop_at = measure_from + int(args.duration * 1e9)
    tasks = [connection(args, request, measure_from, stop_at, result) for _ in range(args.concurrency)]
    await asyncio.wait_for(asyncio.gather(*tasks), args.warmup + args.duration + REQUEST_TIMEOUT + 10)
    return {
        "client": "python-asyncio",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "requests": len(result.latencies),
        "total_requests": result.total,
        "rps": len(result.latencies) / args.duration,
        "latency_ms": percentiles(result.latencies),
        "ttfb_ms": percentiles(result.ttfbs) if args.stream else None,
        "chunk_delay_ms": percentiles(result.chunk_delays) if args.paced else None,
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": result.errors,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--key", default="")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--header", action="append", default=[], help="extra header line 'Name: value'")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--paced", action="store_true", help="read the mock's send stamps from each chunk")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-w", "--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
