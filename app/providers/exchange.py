"""A streamed answer on a pooled connection, read as its bytes arrive: the caller waits, a read never blocks long."""

from __future__ import annotations

import http.client
import select
import ssl
import time
from typing import Any

import urllib3

from ..errors import UpstreamTimeout
from .upstream_errors import stream_broken

Response = urllib3.HTTPResponse
READ_SIZE = 65536
# Errors of a socket read: the connection broke, or the peer sent what http.client cannot parse (a garbage status
# line, an over-long header: http.client's own HTTPException, which urllib3's urlopen would have wrapped).
READ_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError)


class Exchange:
    """A streamed answer read as its bytes arrive; the caller waits with ready() for as long as it chooses.

    A relay waits here with its keep-alive interval as the limit and writes a keep-alive when it passes: a plain
    socket timeout cannot do that, since after one Python's socket file refuses all further reads. Two reads can
    still wait on the socket past that limit, bounded by the read deadline they are given: a head, or a chunk-size
    line, that arrived in part.
    """

    def __init__(self, client: Any, conn: Any) -> None:
        # client: the UpstreamClient whose pool conn came from (its label names the upstream in errors).
        self.client, self.conn = client, conn
        self.response: Response | None = None
        self.dropped = False

    def _sock(self) -> Any:
        """Return the socket while this exchange holds the connection, else None."""
        if self.dropped or (self.response is not None and self.response._connection is None):
            # The body ended and urllib3 gave the connection back to its pool: another request may use it now.
            return None
        return self.conn.sock

    def ready(self, timeout: float) -> bool:
        """Return whether a read would find bytes (or the end), waiting at most timeout seconds for them."""
        sock = self._sock()
        if sock is None or self._buffered(sock):
            return True  # ended, closed or given back: the read says how
        return _readable(sock, max(0.0, timeout))

    def _buffered(self, sock: Any) -> bool:
        """Return whether bytes already read off the socket wait in a buffer (the socket would not say so)."""
        response = self.response
        if response is None:
            return False  # before the head: http.client has read nothing yet
        if len(response._decoded_buffer):
            return True  # decoded (gunzipped) bytes urllib3 holds
        raw = response._fp  # http.client's response, whose fp buffers the socket 8 KiB at a time
        fp = getattr(raw, "fp", None)
        if fp is None:
            return True  # http.client closed it at the body's end: the read returns b""
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted by OpenSSL, not yet taken by http.client: poll() cannot see these
        # After a chunk's data, its closing \r\n waits in the buffer until the next chunk is read: alone, it is
        # not something to read, and taking it as such would block the read until the next chunk comes.
        pending = 2 if raw.chunked and raw.chunk_left == 0 else 0
        sock.settimeout(0)  # peek without blocking; every read sets its own timeout again
        try:
            return len(fp.peek(pending + 1)) > pending
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except READ_ERRORS:
            return True  # broken: the read says how

    def head(self, timeout: float, first_byte: float) -> Response:
        """Read the answer's head (once ready() said so) within timeout; raise when the upstream broke off."""
        self.conn.timeout = timeout
        try:
            response = self.conn.getresponse()
        except (TimeoutError, urllib3.exceptions.ReadTimeoutError) as exc:
            self.drop()
            raise UpstreamTimeout(f"{self.client.label} did not answer within {first_byte:g} s.") from exc
        except READ_ERRORS as exc:
            self.drop()
            raise stream_broken(self.client.label, exc) from None
        # What HTTPConnectionPool.urlopen would set: the connection goes back to this pool when the body ends.
        response._pool, response._connection = self.client.pool, self.conn
        self.response = response
        return response

    def read(self, timeout: float) -> bytes:
        """Return the bytes there are (b"" at the end of the body); timeout bounds a read of a half-sent chunk."""
        sock = self._sock()
        if sock is not None:
            sock.settimeout(timeout)
        return self.response.read1(READ_SIZE, decode_content=True)

    def finish(self) -> None:
        """Read the end of a body whose content is all in (after [DONE]) so its connection is reused, else drop it."""
        end = time.monotonic() + FINISH_SECONDS
        try:
            left = READ_SIZE
            while left > 0 and (sock := self._sock()) is not None and (wait := end - time.monotonic()) > 0:
                sock.settimeout(wait)  # one deadline for the whole end, however the upstream trickles it
                piece = self.response.read1(left)
                if not piece:
                    break
                left -= len(piece)
        except Exception:  # noqa: BLE001 - whatever went wrong, the connection is dropped instead
            pass
        # urllib3 hands the connection back to its pool once the body has ended; otherwise it is dropped here.
        self.drop()

    def drop(self) -> None:
        """Close the connection unless it was given back, and free its pool slot; once, however often called."""
        if self.dropped:
            return
        self.dropped = True
        if self.response is not None:
            release(self.response)
        else:
            discard(self.client.pool, self.conn)


FINISH_SECONDS = 0.25  # how long to wait for the end of a body after [DONE]; upstreams send it at once


def discard(pool: Any, conn: Any) -> None:
    """Close a connection taken from pool and give its slot back, empty (the next user opens a new one)."""
    conn.close()
    pool._put_conn(None)


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

