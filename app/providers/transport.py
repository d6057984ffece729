"""Pooled HTTP to one upstream: whole answers, and streamed ones read as their bytes arrive, errors translated."""

from __future__ import annotations

import json
import logging
import ssl
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import urllib3

from .. import version
from ..errors import UpstreamError, UpstreamTimeout
from .exchange import READ_ERRORS, READ_SIZE, Exchange, Response, discard, release
from .upstream_errors import stream_broken, tls_failed, too_large, unreachable

log = logging.getLogger(__name__)

USER_AGENT = f"lmarena-gateway/{version.__version__}"
# The longest upstream answer (non-stream) or single SSE event kept in memory, unless configured otherwise.
MAX_UPSTREAM_BYTES = 32 * 1024 * 1024


def redact_url(url: str) -> str:
    """Return url without user info, query or fragment, safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class StreamTimer:
    """Read deadlines for one answer: the first content must come within first_byte, then gaps stay under idle."""

    def __init__(self, first_byte: float, idle: float) -> None:
        self.first_byte, self.idle = first_byte, idle
        self.deadline = time.monotonic() + first_byte
        self.committed = False

    def commit(self) -> None:
        """Switch from the first-content deadline to the idle gap (content has started)."""
        self.committed = True
        self.touch()

    def touch(self) -> None:
        """Note that bytes came: once content has started, the idle gap counts from now."""
        if self.committed:
            self.deadline = time.monotonic() + self.idle

    def read_timeout(self) -> float:
        """Return how long the next read may wait."""
        return max(0.001, self.deadline - time.monotonic())

    def expired(self, label: str) -> UpstreamTimeout:
        """Return the error for a read that waited too long."""
        if self.committed:
            return UpstreamTimeout(
                f"{label} sent nothing for {self.idle:g} s; the stream was ended.", code="upstream_idle_timeout"
            )
        return UpstreamTimeout(
            f"{label} sent no content within {self.first_byte:g} s.", code="upstream_first_byte_timeout"
        )


class UpstreamClient:
    """A urllib3 connection pool per upstream, so connections are reused across requests.

    urllib3 directly rather than through a requests.Session: requests merges settings, cookies, hooks and
    environment on every call, which cost about 0.45 ms per request here (bench/README.md), more than the rest of a
    relay's own work; none of it is used against an upstream that is configured explicitly.
    """

    def __init__(
        self,
        label: str,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_bytes: int = MAX_UPSTREAM_BYTES,
        pool_size: int = 32,
        ca_file: str = "",
    ) -> None:
        self.label = label
        self.base_url = base_url
        self.public_url = redact_url(base_url)
        self.prefix = urlsplit(base_url).path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_bytes = max_bytes
        # block=False: a burst past pool_size opens extra connections rather than queueing behind the pool.
        # certifi's public CAs (as requests trusts) rather than the system's: old cPanel hosts carry stale bundles.
        tls = {"ca_certs": ca_file or certifi.where()} if base_url.startswith("https:") else {}
        self.pool = urllib3.connection_from_url(base_url, maxsize=pool_size, block=False, retries=False, **tls)

    def headers(self, data: bytes | None, stream: bool, extra: dict[str, str] | None) -> dict[str, str]:
        """Return the headers of one request."""
        headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if stream:
            headers["Accept"] = "text/event-stream"
            # A compressing upstream would hold chunks back to fill its deflate window.
            headers["Accept-Encoding"] = "identity"
        else:
            headers["Accept-Encoding"] = "gzip, deflate"
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> Response:
        """Send a request and wait for its head; raise UpstreamError/UpstreamTimeout when there is no HTTP answer.

        Only the head is read: pass the response to read_body or read_error_body, or release it.
        """
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=read_timeout or self.read_timeout)
        data = _encode(body)
        try:
            return self.pool.urlopen(
                method,
                self.prefix + path,
                body=data,
                headers=self.headers(data, False, headers),
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
                decode_content=True,
            )
        except urllib3.exceptions.ReadTimeoutError:
            raise UpstreamTimeout(f"{self.label} did not answer within {timeout.read_timeout:g} s.") from None
        except (urllib3.exceptions.HTTPError, ValueError) as exc:  # ValueError: a header http.client refuses
            raise self.send_failed(exc) from None

    def send_stream(self, path: str, body: Any, headers: dict[str, str] | None) -> Exchange:
        """Send a POST that asks for SSE on a pooled connection, without waiting for the answer's head.

        Connecting and sending wait on the socket (at most the connect timeout each); the answer is waited for
        through the Exchange.
        """
        data = _encode(body)
        conn = None
        try:
            conn = self.pool._get_conn()
            conn.timeout = self.connect_timeout
            conn.request(
                "POST",
                self.prefix + path,
                body=data,
                headers=self.headers(data, True, headers),
                preload_content=False,
                decode_content=True,
            )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if conn is not None:
                discard(self.pool, conn)
            raise self.send_failed(exc) from None
        return Exchange(self, conn)

    def send_failed(self, exc: BaseException) -> UpstreamError:
        """Translate a failure to connect or to send a request (before any answer)."""
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # first: it is a ConnectTimeoutError too
            return unreachable(self.label, self.public_url, exc)
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
            return self.connect_timed_out()
        if isinstance(exc, ssl.SSLError | urllib3.exceptions.SSLError):
            return tls_failed(self.label, self.public_url, exc)
        if isinstance(exc, OSError | urllib3.exceptions.ProtocolError):
            return unreachable(self.label, self.public_url, exc)
        # A header http.client refuses (ValueError), a pool closed meanwhile, or another urllib3 failure.
        return UpstreamError(f"{self.label} could not be sent the request ({type(exc).__name__}).")

    def connect_timed_out(self) -> UpstreamTimeout:
        """Return the error for a connection not accepted in time."""
        log.info("%s at %s did not accept a connection in time", self.label, self.public_url)
        return UpstreamTimeout(
            f"{self.label} did not accept a connection within {self.connect_timeout:g} s.",
            code="upstream_connect_timeout",
        )

    def read_body(self, response: Response, timer: StreamTimer) -> bytes:
        """Return a whole (non-stream) body, read by timer's deadline and at most max_bytes long.

        A body read to its end frees the connection for reuse; one that fails is closed with its connection.
        """
        declared = response.headers.get("Content-Length", "")
        pieces: list[bytes] = []
        size = 0
        sock = getattr(response.connection, "sock", None)
        try:
            # The header is only a shortcut: the count below holds whatever it says (or a decompressed size).
            if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
                raise too_large(self.label, "an answer", self.max_bytes)
            while True:
                if sock is not None:
                    sock.settimeout(timer.read_timeout())  # each read waits only for what is left of the deadline
                try:
                    piece = response.read1(READ_SIZE, decode_content=True)
                except urllib3.exceptions.ReadTimeoutError:
                    raise UpstreamTimeout(
                        f"{self.label} did not finish its answer within {timer.first_byte:g} s."
                    ) from None
                except READ_ERRORS as exc:
                    raise stream_broken(self.label, exc) from None
                if not piece:
                    return b"".join(pieces)
                size += len(piece)
                if size > self.max_bytes:
                    raise too_large(self.label, "an answer", self.max_bytes)
                pieces.append(piece)
        except BaseException:
            release(response)
            raise

    def close(self) -> None:
        """Close every pooled connection."""
        self.pool.close()


def read_error_body(response: Response, limit: int = 65536) -> Any:
    """Return the parsed JSON (or short text) of an error response, reading at most limit bytes of a stream."""
    try:
        raw = response.read(limit, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError, ValueError):
        raw = b""
    finally:
        release(response)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply for Python's parser
        return raw.decode("utf-8", "replace").strip()[:300]


def _encode(body: Any) -> bytes | None:
    return None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
