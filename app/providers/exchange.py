"""A streamed answer on a pooled connection, read as its bytes arrive: the caller waits, a read never blocks long."""

from __future__ import annotations

import select
import ssl
from typing import Any

import urllib3

from ..errors import UpstreamTimeout
from .upstream_errors import stream_broken

Response = urllib3.HTTPResponse
READ_SIZE = 65536
# Errors of a socket read: the connection broke, or the peer sent what http.client cannot parse.
READ_ERRORS = (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError)


class Exchange:
    """A streamed answer read as its bytes arrive; the caller waits with ready(), so a read never blocks for long.

    A relay waits here with its keep-alive interval as the limit and writes a keep-alive when it passes: a plain
    socket timeout cannot do that, since after one Python's socket file refuses all further reads.
    """

    def __init__(self, client: Any, conn: Any) -> None:
        # client: the UpstreamClient whose pool conn came from (its label names the upstream in errors).
        self.client, self.conn = client, conn
        self.response: Response | None = None

    def ready(self, timeout: float) -> bool:
        """Return whether a read would find bytes (or the end), waiting at most timeout seconds for them."""
        if self._buffered():
            return True
        sock = self.conn.sock
        if sock is None:
            return True  # closed under us: the read says how
        return _readable(sock, max(0.0, timeout))

    def _buffered(self) -> bool:
        """Return whether bytes already read off the socket wait in a buffer (the socket would not say so)."""
        response, sock = self.response, self.conn.sock
        if response is not None and len(getattr(response, "_decoded_buffer", ())):
            return True  # decoded (gunzipped) bytes urllib3 holds
        fp = getattr(getattr(response, "_fp", None), "fp", None) if response is not None else None
        if sock is None or (response is not None and fp is None):
            return True
        if fp is None:
            return False  # before the head: http.client has read nothing yet
        # http.client reads the socket 8 KiB at a time: a chunk may sit in its buffer, or in OpenSSL's. Peek
        # without blocking (a timeout of 0 makes the socket non-blocking; it is set again before every read).
        # After a chunk's data, its closing \r\n waits in the buffer until the next chunk is read: alone, it is
        # not something to read, and taking it as such would block the read until the next chunk comes.
        raw = response._fp
        pending = 2 if raw.chunked and raw.chunk_left == 0 else 0
        sock.settimeout(0)
        try:
            return len(fp.peek(pending + 1)) > pending
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except READ_ERRORS:
            return True  # broken: the read says how

    def head(self, timeout: float) -> Response:
        """Read the answer's head (call once ready() said so); raise when the upstream broke off."""
        self.conn.timeout = timeout
        try:
            response = self.conn.getresponse()
        except (TimeoutError, urllib3.exceptions.ReadTimeoutError) as exc:
            self.drop()
            raise UpstreamTimeout(f"{self.client.label} did not answer within {timeout:g} s.") from exc
        except READ_ERRORS as exc:
            self.drop()
            raise stream_broken(self.client.label, exc) from None
        # What HTTPConnectionPool.urlopen would set: the connection goes back to this pool when the body ends.
        response._pool, response._connection = self.client.pool, self.conn
        self.response = response
        return response

    def read(self, timeout: float) -> bytes:
        """Return the bytes there are (b"" at the end of the body); timeout bounds a read of a half-sent chunk."""
        sock = self.conn.sock
        if sock is not None:
            sock.settimeout(timeout)
        return self.response.read1(READ_SIZE, decode_content=True)

    def finish(self) -> None:
        """Read the end of a body whose content is all in (after [DONE]) so its connection is reused, else drop it."""
        response = self.response
        sock = self.conn.sock
        if response is None or sock is None:
            self.drop()
            return
        try:
            sock.settimeout(FINISH_SECONDS)
            left = READ_SIZE
            while left > 0 and (piece := response.read1(left)):
                left -= len(piece)
        except Exception:  # noqa: BLE001 - whatever went wrong, the connection is dropped instead
            pass
        # urllib3 hands the connection back to its pool once the body has ended; otherwise it is dropped here.
        release(response)

    def drop(self) -> None:
        """Close the connection (unless already given back) and free its pool slot."""
        if self.response is not None:
            release(self.response)
            return
        self.conn.close()
        self.client.pool._put_conn(None)


FINISH_SECONDS = 0.25  # how long to wait for the end of a body after [DONE]; upstreams send it at once


def release(response: Response) -> None:
    """Close a response; a connection whose body was not read to its end is dropped, never reused half-read."""
    response.close()
    # Give the pool its slot back (holding a closed connection, replaced on next use).
    response.release_conn()


def _readable(sock: Any, timeout: float) -> bool:
    """Return whether sock has bytes (or its end) within timeout seconds."""
    if _poll is None:  # Windows: no poll(), and select() takes sockets there
        return bool(select.select([sock], [], [], timeout)[0])
    poller = _poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(timeout * 1000))


# poll() has no limit on descriptor numbers, unlike select(): a busy gateway can hold more than 1024 open.
_poll = getattr(select, "poll", None)

