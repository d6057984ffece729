"""The gateway as `python -m app` runs it (`make run`): a real process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
CLIENT_KEY = "sk-run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_env(**settings: str) -> dict[str, str]:
    """Return this process's environment without the developer's gateway settings, plus settings."""
    keep = ("GATEWAY_ANALYTICS_PATH",)  # set per test by conftest, like STORAGE_PATH
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("LMARENA_", "GATEWAY_"))}
    env.update(GATEWAY_ENV_FILE="", **settings)
    return env


class Gateway:
    """A `python -m app` process; output holds what it printed once it has stopped."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process, self.port, self.output = process, port, ""
        self.url = f"http://127.0.0.1:{port}"


@contextmanager
def run_gateway(bridge_url: str, umask: int = 0o022, **settings: str) -> Iterator[Gateway]:
    """Start `python -m app` against the bridge at bridge_url (with a shell's usual umask), wait for /health, stop it
    afterwards."""
    port = free_port()
    defaults = {"LMARENA_BRIDGE_API_KEY": "sk-lmab-test", "GATEWAY_API_KEYS": CLIENT_KEY}
    env = gateway_env(**{**defaults, **settings, "GATEWAY_PORT": str(port), "LMARENA_BRIDGE_BASE_URL": bridge_url})
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        umask=umask,
    )
    gateway = Gateway(process, port)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{gateway.url}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield gateway
    finally:
        process.terminate()
        gateway.output, _ = process.communicate(timeout=10)
