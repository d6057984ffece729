"""Small loopback HTTP helpers: a free port, one GET or JSON POST, waiting until a server answers."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a loopback URL; return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def post_json(port: int, path: str, body: dict, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, bytes]:
    """POST JSON to a loopback URL; return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def wait_ready(port: int, path: str, timeout: float, proc: subprocess.Popen | None = None, ok=(200,)) -> None:
    """Poll GET path until it answers an ok status; raise RuntimeError after timeout or when proc exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        try:
            status, body = get(port, path, timeout=5)
            if status in ok:
                return
            last = f"HTTP {status}: {body[:300]!r}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f} s ({last})")
