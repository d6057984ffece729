"""Pooled HTTP to one upstream, with transport failures translated into gateway errors."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import sseclient
import urllib3

from .. import version
from ..errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

Response = urllib3.HTTPResponse
USER_AGENT = f"lmarena-gateway/{version.__version__}"
READ_SIZE = 65536
# The longest upstream answer (non-stream) or single SSE event kept in memory, unless configured otherwise.
MAX_UPSTREAM_BYTES = 32 * 1024 * 1024
# What ends an SSE event: a blank line after \n, \r or \r\n line ends.
_EVENT_ENDS = (b"\n\n", b"\r\r", b"\n\r\n")


def redact_url(url: str) -> str:
    """Return url without user info, query or fragment, safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo" in text or "nodename" in text:
        return "host name not found"
    if "reset" in text.lower():
        return "connection reset"
    return "connection failed"


def _tls_reason(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        # Hostname mismatches, expired and self-signed certificates all land here; OpenSSL's words say which.
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip(" ')\".")
        return f"its certificate is not trusted ({detail[:120]}); for a private CA set GATEWAY_UPSTREAM_CA_FILE"
    return "no protocol or cipher in common, or the server is not speaking TLS"


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

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> Response:
        """Send a request (stream: ask for SSE); raise UpstreamError/UpstreamTimeout when there is no HTTP answer.

        Only the head is read: pass the response to read_body, sse_data or read_error_body, or close it.
        """
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=read_timeout or self.read_timeout)
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        send_headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if data is not None:
            send_headers["Content-Type"] = "application/json"
        if stream:
            send_headers["Accept"] = "text/event-stream"
            # A compressing upstream would hold chunks back to fill its deflate window.
            send_headers["Accept-Encoding"] = "identity"
        else:
            send_headers["Accept-Encoding"] = "gzip, deflate"
        send_headers.update(headers or {})
        try:
            return self.pool.urlopen(
                method,
                self.prefix + path,
                body=data,
                headers=send_headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
                decode_content=True,
            )
        except urllib3.exceptions.NewConnectionError as exc:  # before ConnectTimeoutError: it is a subclass
            raise UpstreamError(
                f"Cannot reach {self.label} at {self.public_url} ({_connection_reason(exc)}). Is it running?",
                code="upstream_unreachable",
            ) from None
        except urllib3.exceptions.ConnectTimeoutError:
            raise UpstreamTimeout(
                f"{self.label} at {self.public_url} did not accept a connection within {timeout.connect_timeout:g} s.",
                code="upstream_connect_timeout",
            ) from None
        except urllib3.exceptions.ReadTimeoutError:
            raise UpstreamTimeout(f"{self.label} did not answer within {timeout.read_timeout:g} s.") from None
        except urllib3.exceptions.SSLError as exc:
            raise UpstreamError(
                f"{self.label} at {self.public_url} failed the TLS handshake: {_tls_reason(exc)}.",
                code="upstream_tls_failed",
                retryable=False,  # the same certificate will fail the same way
            ) from None
        except urllib3.exceptions.ProtocolError as exc:
            raise UpstreamError(
                f"Cannot reach {self.label} at {self.public_url} ({_connection_reason(exc)}). Is it running?",
                code="upstream_unreachable",
            ) from None
        except (urllib3.exceptions.HTTPError, ValueError) as exc:  # ValueError: a header http.client refuses
            raise UpstreamError(f"Request to {self.label} failed: {type(exc).__name__}.") from None

    def read_body(self, response: Response, timer: StreamTimer) -> bytes:
        """Return a whole (non-stream) body, read by timer's deadline and at most max_bytes long.

        A body read to its end frees the connection for reuse; one that fails is closed with its connection.
        """
        declared = response.headers.get("Content-Length", "")
        pieces: list[bytes] = []
        size = 0
        try:
            # The header is only a shortcut: the count below holds whatever it says (or a decompressed size).
            if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
                raise too_large(self.label, "an answer", self.max_bytes)
            for piece in _Pieces(response, self.label, timer, _never):
                size += len(piece)
                if size > self.max_bytes:
                    raise too_large(self.label, "an answer", self.max_bytes)
                pieces.append(piece)
        except UpstreamTimeout:
            release(response)
            raise UpstreamTimeout(f"{self.label} did not finish its answer within {timer.first_byte:g} s.") from None
        except BaseException:
            release(response)
            raise
        return b"".join(pieces)

    def sse_data(self, response: Response, timer: StreamTimer, is_aborted) -> Iterator[str]:
        """Yield each event's data from a streamed response as soon as its bytes arrive."""
        pieces = _Pieces(response, self.label, timer, is_aborted, max_event=self.max_bytes)
        events = sseclient.SSEClient(pieces).events()
        try:
            for event in events:
                yield event.data
        except UnicodeDecodeError:
            raise UpstreamError(
                f"{self.label} sent a stream that is not UTF-8 text.", code="upstream_bad_stream"
            ) from None

    def close(self) -> None:
        self.pool.close()


class StreamTimer:
    """Read deadlines for one stream: the first content must come within first_byte, then gaps stay under idle."""

    def __init__(self, first_byte: float, idle: float) -> None:
        self.first_byte, self.idle = first_byte, idle
        self.deadline = time.monotonic() + first_byte
        self.committed = False

    def commit(self) -> None:
        """Switch from the first-content deadline to the idle gap (content has started)."""
        self.committed = True

    def read_timeout(self) -> float:
        if self.committed:
            return self.idle
        return max(0.001, self.deadline - time.monotonic())

    def expired(self, label: str) -> UpstreamTimeout:
        if self.committed:
            return UpstreamTimeout(
                f"{label} sent nothing for {self.idle:g} s; the stream was ended.", code="upstream_idle_timeout"
            )
        return UpstreamTimeout(
            f"{label} sent no content within {self.first_byte:g} s.", code="upstream_first_byte_timeout"
        )


def _never() -> bool:
    return False


FINISH_SECONDS = 0.25  # how long to wait for the end of a body after [DONE]; upstreams send it at once


def finish(response: Response, limit: int = READ_SIZE) -> bool:
    """Read the end of a body whose content is all in (after [DONE]) so its connection goes back to the pool.

    Return whether it did; a body that does not end quickly is left for release() to drop.
    """
    sock = getattr(response.connection, "sock", None)
    if sock is None:
        return False
    try:
        sock.settimeout(FINISH_SECONDS)
        left = limit
        while left > 0:
            piece = response.read1(left)
            if not piece:
                break
            left -= len(piece)
    except Exception:  # noqa: BLE001 - whatever went wrong, release() drops the connection instead
        return False
    # urllib3 hands the connection back to its pool once the body has ended.
    return response.connection is None


def release(response: Response) -> None:
    """Close a response; a connection whose body was not read to its end is dropped, never reused half-read."""
    response.close()
    # Give the pool its slot back (holding a closed connection, replaced on next use).
    response.release_conn()


class _Pieces:
    """The raw body as pieces, each returned as soon as any bytes are there (read1), errors translated.

    With max_event, an SSE event that grows past it (no blank line within max_event bytes) is an error.
    """

    def __init__(
        self, response: Response, label: str, timer: StreamTimer, is_aborted, max_event: int | None = None
    ) -> None:
        self.response, self.label, self.timer, self.is_aborted = response, label, timer, is_aborted
        self.max_event = max_event
        # Bytes since the last event end, and the last bytes of the previous piece (an end may straddle two).
        self.open_bytes, self.tail = 0, b""
        # urllib3 keeps the socket on the response's connection; its timeout bounds each read.
        self.sock = getattr(response.connection, "sock", None)

    def __iter__(self) -> Iterator[bytes]:
        response = self.response
        while True:
            try:
                if self.sock is not None:
                    self.sock.settimeout(self.timer.read_timeout())
                piece = response.read1(READ_SIZE, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError:
                if self.is_aborted():
                    return
                raise self.timer.expired(self.label) from None
            except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError) as exc:
                # After abort() the socket is shut down under the read; that is our doing, not an upstream fault.
                if self.is_aborted():
                    return
                log.info("%s stream broke: %s", self.label, type(exc).__name__)
                raise UpstreamError(
                    f"{self.label} closed the connection before its answer was complete.",
                    code="upstream_stream_broken",
                ) from None
            if not piece:
                return
            if self.max_event is not None:
                self.count_event(piece)
            yield piece

    def count_event(self, piece: bytes) -> None:
        """Add piece to the length of the open event; raise when that event outgrows max_event."""
        # No parsing, just a search from the end (where an event usually ends): as cheap as a bare relay.
        end = piece.rfind(b"\n\n")
        if end < 0:
            end = max(piece.rfind(b"\r\r"), piece.rfind(b"\n\r\n"))
        if end >= 0:
            self.open_bytes = len(piece) - end
        elif any(mark in self.tail + piece[:2] for mark in _EVENT_ENDS):
            self.open_bytes = len(piece)
        else:
            self.open_bytes += len(piece)
        self.tail = piece[-2:]
        if self.open_bytes > self.max_event:
            raise too_large(self.label, "a stream event", self.max_event)

    def close(self) -> None:
        release(self.response)


def too_large(label: str, what: str, limit: int) -> UpstreamError:
    """Return the error for an upstream answer (or one stream event) over the size cap."""
    log.info("%s sent %s over %d bytes", label, what, limit)
    return UpstreamError(
        f"{label} sent {what} larger than {limit} bytes (GATEWAY_MAX_UPSTREAM_BYTES).",
        code="upstream_response_too_large",
        retryable=False,  # the same question would most likely get the same answer again
    )


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


def upstream_message(body: Any) -> str:
    """Return the human text in an upstream error body (FastAPI detail or OpenAI error)."""
    if isinstance(body, dict):
        detail = body.get("detail")
        error = body.get("error")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return "; ".join(str(d.get("msg", d)) for d in detail[:3])
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        return json.dumps(body, ensure_ascii=False)[:300]
    return str(body)[:300]


def ensure_gateway_error(exc: BaseException, label: str) -> GatewayError:
    """Return exc if it is already a GatewayError, else a generic upstream error for it."""
    if isinstance(exc, GatewayError):
        return exc
    log.exception("unexpected error talking to %s", label)
    return UpstreamError(f"Unexpected failure while talking to {label}.")


def retry_after(headers: Any, cap: float = 300.0) -> float | None:
    """Return the Retry-After seconds of a response (numeric form), capped."""
    try:
        return min(max(float(headers.get("Retry-After")), 0.0), cap)
    except (TypeError, ValueError):
        return None


def status_error(label: str, status: int, said: str, headers: Any) -> GatewayError:
    """Translate an upstream HTTP error status the usual way; providers handle their own cases first."""
    if status in (401, 403):
        return UpstreamError(
            f"{label} rejected the gateway's API key (HTTP {status}).", code="upstream_auth_failed", retryable=False
        )
    if status == 429:
        return RateLimitError(f"{label} is rate-limiting requests ({said})", retry_after=retry_after(headers))
    if status == 404:
        return NotFoundError(f"{label}: {said}", param="model", code="model_not_found")
    if status == 413:
        return InvalidRequestError(f"{label}: {said}", status_code=413, code="request_too_large")
    if 400 <= status < 500:
        return InvalidRequestError(
            f"{label} rejected the request: {said}", status_code=400 if status == 422 else status
        )
    if status == 503:
        return UpstreamUnavailable(f"{label} is unavailable: {said}", retry_after=retry_after(headers))
    if status == 504:
        return UpstreamTimeout(f"{label} timed out: {said}")
    return UpstreamError(f"{label} failed with HTTP {status}: {said}")
