"""A loopback reverse proxy that holds answers back, as mod_deflate does under cPanel's "Compress all content".

`BufferingProxy(target_url, buffer=True)` reads the gateway's whole answer before sending any of it, gzipped when
the client accepts gzip (what mod_deflate does to a stream); `buffer=False` passes every piece on as it arrives,
so the same path can show a stream in pieces. One request per connection; every read bounded by TIMEOUT.
"""

from __future__ import annotations

import gzip
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

TIMEOUT = 30
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "accept-encoding", "host"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        """Stay quiet: the tests read the gateway's answers, not the proxy's log."""

    def _forward(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(proxy.host, proxy.port, timeout=TIMEOUT)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            passed = [(k, v) for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP]
            if proxy.buffer:
                self._send_whole(answer.status, passed, answer.read())
            else:
                self._send_as_it_comes(answer, passed)
        finally:
            upstream.close()
        self.close_connection = True

    def _send_whole(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        gzipped = "gzip" in (self.headers.get("Accept-Encoding") or "")
        if gzipped:
            data = gzip.compress(data)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_as_it_comes(self, answer: http.client.HTTPResponse, headers: list[tuple[str, str]]) -> None:
        self.send_response(answer.status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        while piece := answer.read1(65536):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: BufferingProxy


class BufferingProxy:
    """The proxy on a free loopback port in front of target_url; a context manager that stops it."""

    def __init__(self, target_url: str, *, buffer: bool = True) -> None:
        parts = urlsplit(target_url)
        self.host, self.port, self.buffer = parts.hostname, parts.port, buffer
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.proxy = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> BufferingProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
