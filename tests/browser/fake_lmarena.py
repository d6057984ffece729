"""A fake lmarena.ai served over TLS on loopback, for running userscripts in real Chromium.

Chromium reaches it as `https://lmarena.ai/` through `--host-resolver-rules` (see harness.py). The page has a "Retry"
button that, like the real site, sends `PUT /nextjs-api/stream/retry-evaluation-session-message/<sid>/messages/<mid>`
and reads the streamed answer.
"""

from __future__ import annotations

import html
import json
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from tests.upstreams.httpserver import wait_until

RETRY_PATH = re.compile(r"^/nextjs-api/stream/retry-evaluation-session-message/([^/?#]+)/messages/([^/?#]+)$")
HOSTNAMES = ("lmarena.ai", "*.lmarena.ai")
MAX_BODY_BYTES = 1024 * 1024
# LMArena streams its answer as `<type>:<json>` lines: a0 = text delta, ad = finish.
ANSWER_LINES = (b'a0:"Hello"\n', b'a0:" from"\n', b'a0:" fake LMArena"\n', b'ad:{"finishReason":"stop"}\n')

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LMArena (fake)</title>
<style>
 body {{ font-family: sans-serif; background: #101014; color: #eee; margin: 0; }}
 header {{ padding: 12px 24px; background: #1c1c24; font-size: 20px; font-weight: bold; }}
 main {{ max-width: 760px; margin: 24px auto; }}
 .msg {{ padding: 12px 16px; margin: 12px 0; border-radius: 8px; background: #23232e; white-space: pre-wrap; }}
 .user {{ background: #2f3b63; }}
 button {{ margin-right: 8px; padding: 8px 16px; border: 0; border-radius: 6px; background: #5865f2; color: #fff; }}
 #status {{ color: #9a9; margin-top: 12px; }}
</style></head>
<body><header>LMArena <small>fake, for userscript tests</small></header>
<main id="conversation" data-session-id="{session_id}" data-message-id="{message_id}">
 <div class="msg user">Say hello</div>
 <div class="msg" id="answer">Hello! How can I help you today?</div>
 <button id="retry">Retry</button><button id="retry-xhr">Retry (XHR)</button>
 <button id="retry-request">Retry (Request object)</button>
 <div id="status">session {session_id} / message {message_id}</div>
</main>
<script>
(() => {{
  const conversation = document.getElementById('conversation');
  const answer = document.getElementById('answer');
  const status = document.getElementById('status');
  const retryUrl = () => '/nextjs-api/stream/retry-evaluation-session-message/'
    + conversation.dataset.sessionId + '/messages/' + conversation.dataset.messageId;
  // What lmarena.ai sends: JSON in a text/plain body, so the request stays "simple" (no CORS preflight).
  const init = () => ({{
    method: 'PUT',
    headers: {{'content-type': 'text/plain;charset=UTF-8', accept: '*/*'}},
    body: JSON.stringify({{messages: [], modelId: 'fake-model'}}),
    credentials: 'include',
  }});
  const show = (text, via) => {{
    answer.textContent = text.split('\\n').filter(l => l.startsWith('a0:')).map(l => JSON.parse(l.slice(3))).join('');
    status.textContent = 'retried via ' + via;
  }};
  const fail = (err) => {{ status.textContent = 'retry failed: ' + err; }};
  document.getElementById('retry').addEventListener('click', () => {{
    fetch(retryUrl(), init()).then(r => r.text()).then(t => show(t, 'fetch'), fail);
  }});
  document.getElementById('retry-request').addEventListener('click', () => {{
    const request = new Request(new URL(retryUrl(), location.href), init());
    fetch(request).then(r => r.text()).then(t => show(t, 'request'), fail);
  }});
  document.getElementById('retry-xhr').addEventListener('click', () => {{
    const xhr = new XMLHttpRequest();
    const options = init();
    xhr.open(options.method, retryUrl());
    for (const [name, value] of Object.entries(options.headers)) xhr.setRequestHeader(name, value);
    xhr.onload = () => show(xhr.responseText, 'xhr');
    xhr.onerror = () => fail('network error');
    xhr.send(options.body);
  }});
}})();
</script></body></html>
"""


@dataclass(frozen=True)
class Request:
    """One request the fake received (header names lowercased)."""

    method: str
    path: str
    headers: dict[str, str]
    at: float


@dataclass(frozen=True)
class Retry:
    """One retry request, with the ids taken from its path."""

    method: str
    path: str
    session_id: str
    message_id: str
    content_type: str
    body: bytes
    at: float


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Create a throwaway self-signed certificate for lmarena.ai and *.lmarena.ai; return (cert, key) paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ",".join(f"DNS:{name}" for name in HOSTNAMES)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=lmarena.ai", "-addext",
         f"subjectAltName={san}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection (or a stuck handshake) ends after this many seconds
    server: _Server

    def setup(self) -> None:
        """Finish the TLS handshake in the handler thread, so a silent client cannot block accept()."""
        self.fake = self.server.fake
        self.fake._track(self.request, add=True)
        try:
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        except BaseException:
            self.fake._track(self.request, add=False)
            raise
        super().setup()

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            self.fake._track(self.request, add=False)

    def log_message(self, format: str, *args: object) -> None:
        """Drop the default per-request stderr logging."""

    def do_GET(self) -> None:
        """Serve the conversation page at / and /c/<anything>, a 204 favicon, else 404."""
        self.fake._record(self)
        path = self.path.split("?", 1)[0]
        if path == "/" or path.startswith("/c/"):
            ids = {"session_id": html.escape(self.fake.session_id), "message_id": html.escape(self.fake.message_id)}
            self._send(200, PAGE.format(**ids).encode(), "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._send(404, b'{"error":"not found"}', "application/json")

    def do_PUT(self) -> None:
        """Answer the retry endpoint with a streamed text/plain body like LMArena's; anything else is 404."""
        self.fake._record(self)
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
        body = self.rfile.read(length)
        match = RETRY_PATH.match(self.path)
        if match is None:
            self._send(404, b'{"error":"not found"}', "application/json")
            return
        self.fake._record_retry(self, match, body)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for line in ANSWER_LINES:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            self.fake._stopping.wait(self.fake.chunk_delay)
        self.wfile.write(b"0\r\n\r\n")

    do_POST = do_PUT

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, fake: FakeLMArena, context: ssl.SSLContext) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.server_bind()
        self.server_activate()

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host name."""
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: object) -> None:
        """Ignore clients that hang up or fail the handshake (Chromium preconnects); keep anything else."""
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, OSError):  # ssl.SSLError is an OSError
            self.fake.errors.append(error)


class FakeLMArena:
    """HTTPS server on 127.0.0.1:<free port> that plays lmarena.ai: a conversation page and the retry endpoint.

    `session_id`/`message_id` are the lowercase UUIDs the page puts in its retry URL; `new_ids()` changes them for
    pages loaded afterwards (reload the page to retry with the new ids). `requests` and `retries` record what came in.
    """

    def __init__(self, chunk_delay: float = 0.01) -> None:
        self.chunk_delay = chunk_delay
        self.session_id = ""
        self.message_id = ""
        self.new_ids()
        self.requests: list[Request] = []
        self.retries: list[Retry] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    def new_ids(self) -> tuple[str, str]:
        """Pick fresh session and message ids for the pages served from now on; return them."""
        self.session_id, self.message_id = str(uuid.uuid4()), str(uuid.uuid4())
        return self.session_id, self.message_id

    def start(self) -> Self:
        """Make a certificate, bind a free loopback port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("fake lmarena already started")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="fake-lmarena-") as directory:
            context.load_cert_chain(*make_certificate(Path(directory)))
        self._stopping.clear()
        self._server = _Server(self, context)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"FakeLMArena:{self._port}"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection, waiting (bounded) for the handlers to finish."""
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
        self.wait_until(lambda: not self._connections, timeout=2)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Return the loopback port (0 before start)."""
        return self._port

    @property
    def url(self) -> str:
        """Return the loopback base URL, e.g. https://127.0.0.1:54321 (Chromium uses https://lmarena.ai/)."""
        return f"https://127.0.0.1:{self._port}"

    def wait_for_retries(self, count: int, timeout: float = 5.0) -> list[Retry]:
        """Wait until at least `count` retries came in or `timeout` passed; return the retries so far."""
        self.wait_until(lambda: len(self.retries) >= count, timeout)
        with self._lock:
            return list(self.retries)

    wait_until = staticmethod(wait_until)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _record(self, handler: _Handler) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(Request(handler.command, handler.path, headers, time.time()))

    def _record_retry(self, handler: _Handler, match: re.Match[str], body: bytes) -> None:
        content_type = handler.headers.get("Content-Type", "")
        retry = Retry(handler.command, handler.path, match[1], match[2], content_type, body, time.time())
        with self._lock:
            self.retries.append(retry)


def answer_text() -> str:
    """Return the text the page shows after a retry (the a0 pieces joined)."""
    return "".join(json.loads(line[3:]) for line in (x.decode() for x in ANSWER_LINES) if line.startswith("a0:"))
