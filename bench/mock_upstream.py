"""A fast mock of LMArenaBridge's OpenAI API on loopback: pre-encoded answers over HTTP/1.1 keep-alive (asyncio).

Answers like the real bridge (tests/upstreams/captures/lmab_*): `GET /v1/models`, `POST /v1/chat/completions` as
JSON or as SSE (`data: {chat.completion.chunk}` frames, no role chunk, a stop chunk, `data: [DONE]`), each SSE frame
in its own HTTP chunk as uvicorn sends it. Content tokens carry the marker `bnch` so a client can find the first
content chunk whatever a relay adds before it. The model `bench-paced` spaces its chunks PACED_GAP apart and writes
each chunk's send time (`time.monotonic_ns()`, one clock for every process on the machine) into its content, so a
client can measure how long each chunk took to get through a relay. The model `bench-long` is paced the same way,
with LONG_CHUNKS chunks LONG_GAP apart (`--long-chunks`, `--long-gap`; 300 × 0.1 s by default): a long answer as
LMArena streams one, for holding many streams at once.

`GET /bench/stats` counts accepted connections and chat requests (per process).
Run: `python bench/mock_upstream.py --port 5190 [--procs 2]`; it prints `ready <port>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time

MODEL = "bench"
PACED_MODEL = "bench-paced"
LONG_MODEL = "bench-long"
# A real bridge lists dozens of models; the gateway looks the requested one up in this list on every request.
FILLER_MODELS = 48
CONTENT_CHUNKS = 10
PACED_GAP = 0.050
# The long model's shape: set from the command line (main), the same for every connection of this mock.
LONG = {"chunks": 300, "gap": 0.100}
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
CREATED = 1795431208
REPLY = "Hello from the benchmark bridge, answering as fast as it can."


def _http(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nserver: uvicorn\r\ncontent-length: {len(body)}\r\ncontent-type: {content_type}\r\n"
    return head.encode() + b"vary: Origin\r\n\r\n" + body


def _chunk(data: bytes) -> bytes:
    """Return data as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(obj: dict) -> bytes:
    # The bridge encodes with Python's default separators (", ", ": "), as the captures show.
    return _chunk(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")


def _delta(model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": "chatcmpl-bench-0000",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"vary: Origin\r\ntransfer-encoding: chunked\r\n\r\n"
)
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
NOT_FOUND = _http("404 Not Found", "application/json", b'{"detail":"Not Found"}')
BAD_REQUEST = _http("400 Bad Request", "application/json", b'{"detail":"Invalid JSON request body"}')
MODELS = _http(
    "200 OK",
    "application/json",
    json.dumps(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": CREATED, "owned_by": "LMArenaBridge"}
                for name in (MODEL, PACED_MODEL, LONG_MODEL, *(f"filler-model-{i:02d}" for i in range(FILLER_MODELS)))
            ],
        },
        separators=(",", ":"),
    ).encode(),
)


class Answers:
    """Pre-encoded answers per model id (the bridge echoes the model asked for), built once each."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._json: dict[str, bytes] = {}
        self._stream: dict[str, list[bytes]] = {}

    def completion(self, model: str) -> bytes:
        found = self._json.get(model)
        if found is None:
            body = {
                "id": "chatcmpl-bench-0000",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(REPLY) // 4, "total_tokens": len(REPLY) // 4},
            }
            found = _http("200 OK", "application/json", json.dumps(body, ensure_ascii=False).encode())
            if len(self._json) < self.limit:
                self._json[model] = found
        return found

    def stream(self, model: str) -> list[bytes]:
        """Return the writes of a whole stream: head + first chunk, each other chunk, end."""
        found = self._stream.get(model)
        if found is None:
            chunks = [_sse(_delta(model, {"content": f"bnch{i} "})) for i in range(CONTENT_CHUNKS)]
            found = [STREAM_HEAD + chunks[0], *chunks[1:], self.end(model)]
            if len(self._stream) < self.limit:
                self._stream[model] = found
        return found

    @staticmethod
    def end(model: str) -> bytes:
        """Return the stop chunk, `data: [DONE]` and the last HTTP chunk."""
        return _sse(_delta(model, {}, "stop")) + DONE


ANSWERS = Answers()
# Per process: how many connections were accepted and chat requests answered (GET /bench/stats shows them), so a
# run can tell whether a relay reuses its upstream connections.
STATS = {"connections": 0, "chat_requests": 0}


class MockProtocol(asyncio.Protocol):
    """One keep-alive connection: parse request heads and bodies, answer in order; a paced stream holds the line."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        # asyncio sets TCP_NODELAY only on sockets made with proto=IPPROTO_TCP; without it Nagle holds each small
        # chunk back until the previous one is acknowledged (40 ms with delayed ACKs).
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        STATS["connections"] += 1
        self.transport = transport
        self.buffer = bytearray()
        self.busy = False  # a paced stream is being written; later requests wait for it
        self.closed = False
        self.close_after = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.process()

    def process(self) -> None:
        while not self.busy and not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).lower()
            length = _content_length(head)
            if length is None or length > MAX_BODY:
                self.transport.write(BAD_REQUEST)
                self.transport.close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.answer(head, body)
            if b"\r\nconnection: close" in head:
                self.close_after = True  # a paced answer still being written closes the connection at its end
                if not self.busy:
                    self.transport.close()
                return

    def answer(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        parts = line.split(b" ")
        method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) >= 2 else (b"", b"")
        if method == b"get" and path == b"/v1/models":
            self.transport.write(MODELS)
        elif method == b"get" and path == b"/bench/stats":
            self.transport.write(_http("200 OK", "application/json", json.dumps(STATS).encode()))
        elif method == b"post" and path == b"/v1/chat/completions":
            STATS["chat_requests"] += 1
            try:
                request = json.loads(body)
                model, stream = str(request["model"]), request.get("stream") is True
            except (ValueError, KeyError, TypeError):
                self.transport.write(BAD_REQUEST)
                return
            if not stream:
                self.transport.write(ANSWERS.completion(model))
            elif model in (PACED_MODEL, LONG_MODEL):
                self.busy = True
                self.transport.write(STREAM_HEAD)
                if model == PACED_MODEL:
                    self.paced(model, 0, CONTENT_CHUNKS, PACED_GAP)
                else:
                    self.paced(model, 0, LONG["chunks"], LONG["gap"])
            else:
                for piece in ANSWERS.stream(model):
                    self.transport.write(piece)
        else:
            self.transport.write(NOT_FOUND)

    def paced(self, model: str, number: int, chunks: int, gap: float) -> None:
        """Write chunk `number` of `chunks` stamped with its send time, then schedule the next one gap s later."""
        if self.closed:
            return
        if number < chunks:
            self.transport.write(_sse(_delta(model, {"content": f"bnch{time.monotonic_ns():020d} "})))
            asyncio.get_running_loop().call_later(gap, self.paced, model, number + 1, chunks, gap)
            return
        self.transport.write(Answers.end(model))
        self.busy = False
        if self.close_after:
            self.transport.close()
            return
        self.process()


def _content_length(head: bytes) -> int | None:
    """Return the body length a (lowercased) request head declares; None for chunked bodies (not supported)."""
    if b"\r\ntransfer-encoding:" in head:
        return None
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    start = at + len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    value = head[start : stop if stop >= 0 else len(head)]
    try:
        return int(value.strip())
    except ValueError:
        return None


def listen(port: int) -> socket.socket:
    """Return a loopback listening socket that other processes may share (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    return sock


async def serve(sock: socket.socket) -> None:
    """Serve on sock until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, sock=sock, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Listen on 127.0.0.1:port with `procs` processes and serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--procs", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--long-chunks", type=int, default=LONG["chunks"], help=f"chunks of {LONG_MODEL}")
    parser.add_argument("--long-gap", type=float, default=LONG["gap"], help=f"seconds between {LONG_MODEL}'s chunks")
    args = parser.parse_args(argv)
    LONG.update(chunks=args.long_chunks, gap=args.long_gap)
    children = []
    for _ in range(max(0, args.procs - 1)):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(listen(args.port)))
            os._exit(0)
        children.append(pid)
    sock = listen(args.port)
    print(f"ready {args.port}", flush=True)
    try:
        asyncio.run(serve(sock))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
