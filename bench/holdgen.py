"""Hold many long streams open at once and say how many a server kept flowing, and how well (asyncio, raw sockets).

N streams start within the ramp, evenly spread (so a server's accept backlog is not what is measured), each on its
own connection, each asking for the mock's `bench-long` answer (a chunk every 100 ms for 30 s by default, each
stamped with its send time) and reading it to the end. Meanwhile `GET /health` is asked every HEALTH_EVERY s on a
new connection, as a monitor would. What it reports:

- held: the most streams receiving content at the same moment (each stream counts from its first content chunk to
  its last);
- completed: streams read to `data: [DONE]` with every chunk, by the deadline (ramp + the answer's length + slack);
- TTFB: request sent -> first content chunk (a server that queues streams shows it here);
- chunk delay: arrival here - the mock's send stamp, every chunk of every stream (`time.monotonic_ns()`, one clock
  for every process on the machine);
- health: the latency of each probe sent while every stream should be open (after the ramp, before the first
  answer's end); a probe with no answer within HEALTH_TIMEOUT counts as failed.

With --procs K the streams are shared among K processes (stream i goes to process i % K, on the same schedule), so
the client's own CPU does not delay what it measures. Prints one JSON object.

    python bench/holdgen.py --port P --key K --streams 256 --chunks 300 --gap 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from loadgen import percentiles

STAMP = re.compile(rb"bnch(\d{20})")
DONE = b"data: [DONE]"
HEALTH_EVERY = 0.5
HEALTH_TIMEOUT = 10.0
SLACK = 15.0  # seconds past the answer's length before an unfinished stream counts as not held


def raise_open_files() -> int:
    """Raise this process's open-file limit to its hard limit (1,024 streams need more than a default 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_request(port: int, key: str, model: str) -> bytes:
    """Return the bytes of one stream request (its connection closes after the answer)."""
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "stream": True},
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Slice:
    """What one process saw of its streams: raw figures, merged by the parent."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []  # (first, last) content arrival of each stream that had content
        self.ttfbs: list[int] = []
        self.delays: list[int] = []
        self.completed = 0
        self.health: list[int] = []
        self.health_failed = 0
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def one_stream(args: argparse.Namespace, request: bytes, start_at: int, out: Slice) -> None:
    """Wait for start_at, then send one stream request and read its answer to the end, noting every chunk."""
    await asyncio.sleep(max(0, start_at - time.monotonic_ns()) / 1e9)
    sent = time.monotonic_ns()
    first = last = 0
    stamps = 0
    done = False
    pending = bytearray()
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            out.error(f"status {status}")
            return
        if b"chunked" not in head.lower():
            out.error("answer not chunked")
            return
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                break
            pending += (await reader.readexactly(size + 2))[:-2]
            now = time.monotonic_ns()
            # A server in between (Apache) may cut an event across HTTP chunks: read whole events only.
            end = pending.rfind(b"\n\n") + 2
            if end < 2:
                continue
            data, pending = bytes(pending[:end]), pending[end:]
            found = False
            for match in STAMP.finditer(data):
                out.delays.append(now - int(match.group(1)))
                stamps += 1
                found = True
            if found:
                if not first:
                    first = now
                    out.ttfbs.append(now - sent)
                last = now
            if DONE in data:
                done = True
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
        out.error(type(exc).__name__)
    except asyncio.CancelledError:
        out.error("not finished by the deadline")
        raise
    finally:
        if first:
            out.spans.append((first, last))
        if done and stamps == args.chunks:
            out.completed += 1
        elif done:
            out.error("chunks missing")
        if writer is not None:
            writer.close()


async def probe_health(args: argparse.Namespace, start: int, stop: int, out: Slice) -> None:
    """Ask GET health_path every HEALTH_EVERY s between start and stop (monotonic ns), each on a new connection."""
    await asyncio.sleep(max(0, start - time.monotonic_ns()) / 1e9)
    request = f"GET {args.health_path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nConnection: close\r\n\r\n"
    request = request.encode()
    while time.monotonic_ns() < stop:
        began = time.monotonic_ns()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), HEALTH_TIMEOUT)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), HEALTH_TIMEOUT)
            if answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"):
                out.health.append(time.monotonic_ns() - began)
            else:
                out.health_failed += 1
        except (OSError, TimeoutError):
            out.health_failed += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(max(0.0, HEALTH_EVERY - (time.monotonic_ns() - began) / 1e9))


async def run_slice(args: argparse.Namespace, index: int, begin: int) -> Slice:
    """Run this process's share of the streams (and the health probes in process 0); return what it saw."""
    raise_open_files()
    out = Slice()
    request = build_request(args.port, args.key, args.model)
    step = args.ramp * 1e9 / max(1, args.streams)
    length = args.chunks * args.gap * 1e9
    ramp_end = begin + int(args.ramp * 1e9)
    tasks = [
        asyncio.ensure_future(one_stream(args, request, begin + int(i * step), out))
        for i in range(index, args.streams, args.procs)
    ]
    if index == 0 and args.health:
        # Probes while every stream should be open: from the ramp's end to the first answer's end.
        tasks.append(asyncio.ensure_future(probe_health(args, ramp_end, begin + int(length), out)))
    deadline = (ramp_end + length) / 1e9 + SLACK - time.monotonic()
    _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return out


def slice_in_process(args: argparse.Namespace, index: int, begin: int) -> dict:
    """Run one slice in a child process; return its raw figures."""
    return vars(asyncio.run(run_slice(args, index, begin)))


def most_at_once(spans: list[tuple[int, int]]) -> int:
    """Return the largest number of spans open at one moment."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], -e[1]))
    best = current = 0
    for _, change in events:
        current += change
        best = max(best, current)
    return best


def run(args: argparse.Namespace) -> dict:
    """Hold the streams and return the merged figures."""
    begin = time.monotonic_ns() + int(0.5e9)
    if args.procs == 1:
        parts = [vars(asyncio.run(run_slice(args, 0, begin)))]
    else:
        with ProcessPoolExecutor(args.procs, mp_context=get_context("fork")) as pool:
            futures = [pool.submit(slice_in_process, args, i, begin) for i in range(args.procs)]
            parts = [f.result() for f in futures]
    spans = [tuple(s) for p in parts for s in p["spans"]]
    errors: dict[str, int] = {}
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    health = [h for p in parts for h in p["health"]]
    return {
        "client": "python-asyncio holdgen",
        "streams": args.streams,
        "chunks": args.chunks,
        "gap_s": args.gap,
        "ramp_s": args.ramp,
        "procs": args.procs,
        "held": most_at_once(spans),
        "completed": sum(p["completed"] for p in parts),
        "ttfb_ms": percentiles([t for p in parts for t in p["ttfbs"]]),
        "chunk_delay_ms": percentiles([d for p in parts for d in p["delays"]]),
        "health_ms": percentiles(health),
        "health_failed": sum(p["health_failed"] for p in parts),
        "errors": errors,
        "seconds": (time.monotonic_ns() - begin) / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, hold the streams, print the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--model", default="bench-long")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=300, help="content chunks the mock sends per answer")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between the mock's chunks")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds over which the streams start")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--health-path", default="/health", help="what the probes ask for (LiteLLM's differs)")
    parser.add_argument("--no-health", dest="health", action="store_false")
    args = parser.parse_args(argv)
    args.procs = max(1, min(args.procs, args.streams))
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
