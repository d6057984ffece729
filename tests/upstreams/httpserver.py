"""Reusable loopback HTTP/1.1 server for fake upstreams, built on the standard library only."""

from __future__ import annotations

import json
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

from .script import CHAT_PATH, Delay, Refuse, Stall, Status, Step, check_steps, play_step, take_step

__all__ = ["Delay", "FakeUpstream", "RecordedRequest", "Refuse", "Stall", "Status", "UpstreamHandler", "compact_json"]

# Every wait is cut into slices this long so stop() and a client hanging up are noticed quickly.
POLL_SECONDS = 0.02
MAX_BODY_BYTES = 32 * 1024 * 1024

Headers = Iterable[tuple[str, str]]


class _Aborted(Exception):
    """Abandon the current response: the client went away, the server is stopping or the fake dropped it."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake upstream received it (header names lowercased), and the scripted step it got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float
    served: str | None = None


@dataclass(frozen=True)
class Disconnect:
    """A client that hung up while the fake was still producing its response."""

    path: str
    at: float


def compact_json(obj: Any) -> bytes:
    """Encode like Starlette's JSONResponse: no spaces, UTF-8 text kept as is."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class UpstreamHandler(BaseHTTPRequestHandler):
    """Request handler with helpers for exact JSON, chunked streams, waits and faults."""

    protocol_version = "HTTP/1.1"
    server: _Server

    @property
    def upstream(self) -> FakeUpstream:
        """Return the fake upstream this handler serves."""
        return self.server.upstream

    def setup(self) -> None:
        """Register the connection so stop() can unblock it."""
        super().setup()
        with self.upstream._lock:
            self.upstream._connections.add(self.connection)
            self.upstream.accepted += 1

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            with self.upstream._lock:
                self.upstream._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the default per-request stderr logging."""

    def _dispatch(self) -> None:
        """Read and record the request, let the upstream answer it, and clean up whatever happened."""
        self.route_path = urlsplit(self.path).path
        self.headers_sent = False
        self._streaming = False
        self._gone = False
        self.stall: Stall | None = None
        self._chunks = 0
        try:
            self.record, step = self.upstream._record_request(self, self._read_body())
            if step is None or not play_step(self, step):
                self.upstream.handle(self)
        except _Aborted:
            self.close_connection = True
        except Exception as exc:  # a bug in a fake must not hang the client: answer 500 like uvicorn does
            self.upstream.errors.append(exc)
            self.close_connection = True
            if not self.headers_sent:
                try:
                    self.send_body(500, b"Internal Server Error", "text/plain; charset=utf-8")
                except _Aborted:
                    pass
        finally:
            if self._streaming:
                self.upstream._count_stream(-1)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        """Read a Content-Length or chunked request body, capped at MAX_BODY_BYTES."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES))
        parts: list[bytes] = []
        total = 0
        while total <= MAX_BODY_BYTES:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            parts.append(self.rfile.read(size))
            total += size
            self.rfile.readline(8)
        for _ in range(100):  # trailer lines, up to the blank line (or EOF)
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                break
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        """Write raw bytes to the client; a failed write means it hung up."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self._client_gone()

    send_raw = write

    def send_head(self, status: int, headers: Headers) -> None:
        """Send the status line and headers uvicorn-style: lowercase names, `server` and `date` first."""
        self.send_response_only(status)
        self.send_header("server", self.upstream.server_header)
        self.send_header("date", self.date_time_string())
        for name, value in headers:
            self.send_header(name, value)
        self.headers_sent = True
        self._headers_buffer.append(b"\r\n")
        data = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.write(data)

    def send_body(self, status: int, body: bytes, content_type: str, headers: Headers = ()) -> None:
        """Send a complete response with an exact body and content-length."""
        head = [*headers, ("content-length", str(len(body))), ("content-type", content_type)]
        self.send_head(status, [*head, *self.upstream.extra_headers])
        if self.command != "HEAD":
            self.write(body)

    def send_json(self, status: int, payload: Any, headers: Headers = ()) -> None:
        """Send JSON: bytes or str verbatim, anything else compact with UTF-8 text unescaped."""
        if isinstance(payload, str):
            payload = payload.encode()
        body = payload if isinstance(payload, bytes) else compact_json(payload)
        self.send_body(status, body, "application/json", headers)

    def start_stream(
        self, status: int = 200, content_type: str = "text/event-stream; charset=utf-8", headers: Headers = ()
    ) -> None:
        """Send headers for a chunked streaming response (`headers` go before content-type)."""
        self._streaming = True
        self.upstream._count_stream(+1)
        head = [*headers, ("content-type", content_type), *self.upstream.extra_headers]
        self.send_head(status, [*head, ("transfer-encoding", "chunked")])

    def write_chunk(self, data: bytes) -> None:
        """Send one HTTP chunk (empty data is skipped: a zero-length chunk would end the body)."""
        if data:
            self.before_chunk(self._chunks)
            self._chunks += 1
            self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def before_chunk(self, index: int) -> None:
        """Hook run before chunk number `index` (from 0) of a chunked body: plays a scripted Stall."""
        if self.stall is not None and index >= self.stall.after_chunks:
            self._play_stall()

    def _play_stall(self) -> None:
        stall, self.stall = self.stall, None
        if stall is not None:
            self.wait(stall.seconds)

    def end_stream(self) -> None:
        """Send the terminating zero-length chunk, after any Stall the body was too short to reach."""
        self._play_stall()
        self.write(b"0\r\n\r\n")

    def drop_connection(self) -> None:
        """Close the TCP connection at once, mid-response, and abandon the handler."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Aborted

    def wait(self, seconds: float) -> None:
        """Sleep, aborting at once if the client hangs up or the server stops."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            if self.upstream.stopping:
                raise _Aborted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._watch_peer(min(remaining, POLL_SECONDS))

    def _watch_peer(self, timeout: float) -> None:
        """Block up to `timeout`, raising if the peer closed its end meanwhile."""
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if not readable:
                return
            peeked = self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            peeked = b""
        if peeked:
            # Bytes of a pipelined request, not a hang-up: select would keep firing, so sleep instead.
            self.upstream._stopping.wait(timeout)
            return
        self._client_gone()

    def _client_gone(self) -> None:
        """Record the hang-up (once, and not when we are the ones stopping) and abandon the handler."""
        if not self._gone and not self.upstream.stopping:
            self._gone = True
            self.upstream._record_disconnect(self.path)
        raise _Aborted


def wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll `predicate` until it is truthy or `timeout` passes; return its last truthiness."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops a burst of parallel connects, which then retry only after 1 s.
    request_queue_size = 128

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        super().__init__(("127.0.0.1", 0), upstream.handler_class)
        if upstream.tls is not None:
            # The handshake then happens on the handler's first read, on its own thread, not in accept().
            self.socket = upstream.tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Print a handler's crash, except a TLS handshake the client refused (a test about that expects it)."""
        if not isinstance(sys.exc_info()[1], ssl.SSLError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class FakeUpstream:
    """Loopback HTTP server that records what it receives; subclasses answer in `handle`."""

    handler_class: type[UpstreamHandler] = UpstreamHandler
    server_header = "fake-upstream"
    extra_headers: tuple[tuple[str, str], ...] = ()

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []
        self.errors: list[BaseException] = []
        self.open_streams = 0
        self._scripted: list[tuple[str | None, Step]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self.accepted = 0  # TCP connections accepted so far: a client that reuses its connections keeps it low
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.tls: ssl.SSLContext | None = None  # set before start() to serve https

    def handle(self, handler: UpstreamHandler) -> None:
        """Answer one request; the default is FastAPI's 404."""
        handler.send_json(404, {"detail": "Not Found"})

    def script(self, *steps: Step, path: str | None = CHAT_PATH) -> None:
        """Queue one-shot steps, each answering the next request to `path` (None: any path) before `handle`."""
        checked = check_steps(steps)
        with self._lock:
            self._scripted.extend((path, step) for step in checked)

    @property
    def served(self) -> list[str | None]:
        """Return, per recorded request in order, the name of the scripted step that served it (None: normal)."""
        with self._lock:
            return [record.served for record in self.requests]

    @property
    def pending_steps(self) -> list[Step]:
        """Return the scripted steps not consumed yet."""
        with self._lock:
            return [step for _, step in self._scripted]

    def start(self) -> Self:
        """Bind a free loopback port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("fake upstream already started")
        self._stopping.clear()
        self._server = _Server(self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # perf: stop() waits for the loop's next poll; at 0.05 s that was 47 ms a test, 20 s of make test-fast.
            kwargs={"poll_interval": 0.005},
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and cut every open connection, waiting (bounded) for handlers."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.wait_until(lambda: not self._connections, timeout=1.0)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:54321 (https:// when serving TLS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    @property
    def stopping(self) -> bool:
        """Return whether stop() has been called."""
        return self._stopping.is_set()

    wait_until = staticmethod(wait_until)

    def _record_request(self, handler: UpstreamHandler, body: bytes) -> tuple[RecordedRequest, Step | None]:
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        with self._lock:  # one lock for both, so `served` lines up with `requests` and no step is served twice
            step = take_step(self._scripted, handler.route_path)
            record = RecordedRequest(
                handler.command, handler.path, headers, body, parsed, time.monotonic(), step.name if step else None
            )
            self.requests.append(record)
        return record, step

    def _record_disconnect(self, path: str) -> None:
        with self._lock:
            self.disconnects.append(Disconnect(path, time.monotonic()))

    def _count_stream(self, delta: int) -> None:
        with self._lock:
            self.open_streams += delta
