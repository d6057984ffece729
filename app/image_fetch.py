"""b64_json's downloads: public https:// images only, from the address checked, within one deadline and size cap."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from .address_policy import refusal
from .errors import UpstreamError
from .pinned_connection import CONNECT_SECONDS, Watchdog, connect, tls_context
from .providers.transport import USER_AGENT, redact_url
from .providers.upstream_errors import connection_reason, tls_reason

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 3
READ_SIZE = 65536
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What connecting and reading may raise: sockets and TLS (OSError), http.client's parser, urllib3, and ValueError
# (a URL or header http.client refuses, a host name IDNA cannot encode).
FETCH_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError)


def refused(reason: str) -> UpstreamError:
    """Return the error for an image URL the gateway will not fetch."""
    error = UpstreamError(
        f"The image URL was not fetched: {reason}. Only https:// images on public addresses are downloaded for "
        "b64_json (and hosts in GATEWAY_IMAGE_FETCH_ALLOW_HOSTS); ask for response_format 'url'.",
        code="image_download_refused",
        retryable=False,
    )
    # OpenAI's SDKs retry a 502 twice by default, generating the images again each time, to the same refusal.
    error.headers["x-should-retry"] = "false"
    return error


def failed(reason: str) -> UpstreamError:
    """Return the error for an image that could not be downloaded."""
    return UpstreamError(
        f"The image was generated but could not be downloaded for b64_json: {reason}; ask for response_format 'url'.",
        code="image_download_failed",
    )


@dataclass(frozen=True)
class Target:
    """One URL to fetch, split into what its connection needs."""

    url: str
    scheme: str
    host: str  # lower case, IDNA-encoded, without brackets or a trailing dot
    port: int
    path: str  # with the query

    @classmethod
    def parse(cls, url: str) -> Target:
        """Split url; raise the refusal for one that is not an http(s) URL with a host."""
        try:
            parts = urlsplit(url)
            port = parts.port
            host = (parts.hostname or "").rstrip(".").encode("idna").decode("ascii")
        except ValueError:  # a bad port or bracket, a host IDNA refuses (UnicodeError)
            raise refused("it is not a valid URL") from None
        if parts.scheme not in ("http", "https"):
            raise refused(f"its scheme is {parts.scheme or 'missing'}")
        if not host:
            raise refused("it names no host")
        try:
            host = str(ipaddress.ip_address(host))  # one spelling per address, as the allow-list has it
        except ValueError:
            pass  # a name
        default = 443 if parts.scheme == "https" else 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.scheme, host, port or default, path)

    @property
    def host_header(self) -> str:
        """Return the Host header's value: the URL's host (not the address connected to), its port if not default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"


class ImageFetch:
    """The b64_json downloads of one request, under one deadline for all of them."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.allowed: frozenset[tuple[str, int | None]] = config["GATEWAY_IMAGE_FETCH_ALLOW_HOSTS"]
        self.seconds: float = config["GATEWAY_IMAGE_FETCH_TIMEOUT"]
        self.deadline = time.monotonic() + self.seconds
        self.tls = tls_context(config["GATEWAY_UPSTREAM_CA_FILE"])

    def b64(self, url: str) -> str:
        """Return the image at url, or a base64 data: URL's payload, as base64."""
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if not header.lower().startswith("data:image/") or ";base64" not in header:
                raise failed("it is a data: URL that is not a base64 image")
            return payload
        for _ in range(MAX_REDIRECTS + 1):
            target = Target.parse(url)
            addresses = self._addresses(target)
            location, content = self._get(target, addresses)
            if location is None:
                return base64.b64encode(content).decode("ascii")
            url = urljoin(url, location)  # the next hop is checked like the first
        raise refused(f"it redirected more than {MAX_REDIRECTS} times")

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._too_slow()
        return left

    def _too_slow(self) -> UpstreamError:
        return failed(f"it did not arrive within {self.seconds:g} s (GATEWAY_IMAGE_FETCH_TIMEOUT)")

    def _addresses(self, target: Target) -> list[str]:
        """Return the addresses to connect to; raise the refusal for a URL or an address the policy forbids."""
        allowed = (target.host, target.port) in self.allowed or (target.host, None) in self.allowed
        if target.scheme != "https" and not allowed:
            raise refused("it is not https://")
        try:
            # Resolved once: the connection goes to these very addresses, so DNS cannot answer differently between
            # this check and the connection (rebinding). The system resolver's own timeout bounds this wait.
            found = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise failed(f"its host {target.host} could not be resolved") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        if not allowed:
            # Every address, not only the first: a name that also resolves to an internal address is refused.
            for address in addresses:
                why = refusal(address)
                if why is not None:
                    log.info("image download refused: %s resolves to %s (%s)", redact_url(target.url), address, why)
                    raise refused(f"its host {target.host} resolves to a {why} address")
        return addresses

    def _get(self, target: Target, addresses: list[str]) -> tuple[str | None, bytes]:
        """GET target from the first of addresses that takes a connection; return (a redirect's location, b"") or
        (None, the image)."""
        watchdog = Watchdog(self._left())
        conn = response = None
        try:
            tls = self.tls if target.scheme == "https" else None
            conn = connect(addresses, target.port, target.host, tls, watchdog, self.deadline)
            conn.request(
                "GET",
                target.path,
                headers={
                    "Host": target.host_header,
                    "User-Agent": USER_AGENT,
                    "Accept": "image/*",
                    # Raw bytes: the size cap then counts what arrives, and no gzip bomb is inflated.
                    "Accept-Encoding": "identity",
                },
                preload_content=False,
                decode_content=False,
            )
            conn.timeout = self._left()  # the head's reads wait at most this long each; the watchdog ends the sum
            response = conn.getresponse()
            if response.status in REDIRECTS and response.headers.get("Location"):
                return response.headers["Location"], b""
            content = _read_image(response, target)
            if watchdog.fired:  # the shutdown can look like the end of a body that has no length
                raise self._too_slow()
            return None, content
        except FETCH_ERRORS as exc:
            log.info("image download from %s failed: %s", redact_url(target.url), type(exc).__name__)
            raise self._failure(target, exc, watchdog.fired) from None
        finally:
            watchdog.stop()
            if response is not None:
                response.close()  # its socket file holds the socket open past conn.close() otherwise
            if conn is not None:
                conn.close()

    def _failure(self, target: Target, exc: BaseException, too_late: bool) -> UpstreamError:
        """Return the error for a socket, TLS or HTTP failure, without keys or internals."""
        if too_late or time.monotonic() >= self.deadline:
            return self._too_slow()  # the watchdog's shutdown makes reads fail in any of these ways
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # first: it is a ConnectTimeoutError too
            return failed(f"cannot connect to {target.host} ({connection_reason(exc)})")
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
            return failed(f"{target.host} did not accept a connection within {CONNECT_SECONDS:g} s")
        if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
            return self._too_slow()  # a read waits at most what is left of the deadline
        if isinstance(exc, ssl.SSLError | urllib3.exceptions.SSLError):
            return failed(f"{target.host} failed the TLS handshake: {tls_reason(exc)}")
        return failed(f"{target.host} broke off the download ({type(exc).__name__})")


def _read_image(response: urllib3.HTTPResponse, target: Target) -> bytes:
    """Return an image body, at most MAX_IMAGE_BYTES long; raise for any other answer."""
    headers = response.headers
    if response.status != 200:
        raise failed(f"{target.host} answered HTTP {response.status}")
    kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not kind.startswith("image/"):
        raise failed(f"{target.host} sent {kind or 'no content type'}, not an image")
    if headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        raise failed(f"{target.host} sent it compressed ({headers['Content-Encoding'][:40]})")
    declared = headers.get("Content-Length", "")
    too_large = failed(f"it is larger than {MAX_IMAGE_BYTES} bytes")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
        raise too_large
    pieces: list[bytes] = []
    size = 0
    while piece := response.read1(READ_SIZE):
        size += len(piece)
        if size > MAX_IMAGE_BYTES:
            raise too_large
        pieces.append(piece)
    return b"".join(pieces)
