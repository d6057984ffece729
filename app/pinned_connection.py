"""HTTP(S) connections to an address resolved and checked beforehand, shut down when a deadline passes."""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time

import certifi
import urllib3

CONNECT_SECONDS = 5.0


@functools.lru_cache(maxsize=4)
def tls_context(ca_file: str) -> ssl.SSLContext:
    """Return a context trusting certifi's public CAs and, when set, GATEWAY_UPSTREAM_CA_FILE's too."""
    context = ssl.create_default_context(cafile=certifi.where())  # checks host names, TLS 1.2 or later
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def connect(
    addresses: list[str],
    port: int,
    host: str,
    tls: ssl.SSLContext | None,
    watchdog: Watchdog,
    deadline: float,
) -> urllib3.connection.HTTPConnection:
    """Return a connection to the first of addresses that takes one (as a browser tries a name's addresses).

    With tls, the connection still goes to the address given, while TLS sends host as SNI and verifies the
    certificate against it (the context checks host names): urllib3's documented way to reach a host at an address
    of one's choosing ("Custom SNI Hostname" in its advanced usage guide). DNS is not asked again, so it cannot
    answer differently between the caller's check of the address and the connection (rebinding).
    """
    for number, address in enumerate(addresses, 1):
        timeout = min(CONNECT_SECONDS, deadline - time.monotonic())
        if timeout <= 0:
            raise TimeoutError("deadline passed while connecting")
        if tls is None:
            conn: _HTTPConnection | _HTTPSConnection = _HTTPConnection(address, port, timeout=timeout)
        else:
            conn = _HTTPSConnection(address, port, timeout=timeout, ssl_context=tls, server_hostname=host)
        conn.watchdog = watchdog
        try:
            conn.connect()
            return conn
        except urllib3.exceptions.ConnectTimeoutError:  # NewConnectionError (refused, unreachable) too
            conn.close()
            if number == len(addresses):
                raise
    raise OSError(f"{host} has no address to connect to")


class Watchdog:
    """Shut a connection down when the deadline passes: socket timeouts bound each read, never their sum.

    Without it a server sending a byte just within each read's timeout holds the worker as long as it likes, in
    the head or the body. A TLS handshake is bounded already:
    CPython gives the whole handshake the socket's timeout, here what is left of the deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._twin: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> socket.socket:
        """Keep a duplicate of sock's descriptor to shut the connection down with, and return sock."""
        # A duplicate, not sock itself: TLS takes sock's descriptor over (and the reading thread owns the TLS
        # socket), while ours stays open until stop(), so the shutdown never reaches a reused descriptor number.
        with self._lock:
            if self._twin is not None:
                self._twin.close()  # an address that refused the connection
            self._twin = sock.dup()
            if self.fired:
                self._shutdown()
        return sock

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._twin is not None:
            try:
                self._twin.shutdown(socket.SHUT_RDWR)  # every read on the connection returns or fails at once
            except OSError:
                pass

    def stop(self) -> None:
        """Cancel the deadline and close the duplicate."""
        self._timer.cancel()
        with self._lock:
            if self._twin is not None:
                self._twin.close()
                self._twin = None


class _Watched:
    """A urllib3 connection that hands its socket to a Watchdog as soon as it is connected."""

    watchdog: Watchdog

    def _new_conn(self) -> socket.socket:
        return self.watchdog.watch(super()._new_conn())


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass
