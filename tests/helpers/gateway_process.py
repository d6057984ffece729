"""Gateway processes: `python -m app` in its own OS process on a free loopback port, as a fleet would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.helpers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 30  # three processes importing Flask at once on a busy 2-core machine


class GatewayProcess:
    """One gateway process; settings are environment variables (conftest already cleared the developer's)."""

    def __init__(self, settings: dict[str, str], log: Path, command: list[str] | None = None) -> None:
        # command: `python -m app` unless given (tests/test_serve.py starts gunicorn, which reads GATEWAY_PORT too).
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "GATEWAY_ENV_FILE": "", **settings, "GATEWAY_PORT": str(self.port)}
        with open(log, "wb") as out:  # a file, not a pipe: a chatty process never blocks on a full pipe
            self.process = subprocess.Popen(
                command or [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, deadline: float) -> None:
        """Return once /health answers; raise with the process's output when it exits or deadline passes."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}: {self.output()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready within {START_SECONDS} s: {self.output()}")

    def output(self) -> str:
        """Return what the process printed so far (its last 4,000 characters)."""
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_fleet(count: int, settings: dict[str, str], logs: Path) -> list[GatewayProcess]:
    """Start count gateway processes with the same settings at once; return them when every one answers."""
    logs.mkdir(parents=True, exist_ok=True)
    fleet: list[GatewayProcess] = []
    try:
        for number in range(count):
            fleet.append(GatewayProcess(settings, logs / f"gateway-{number}.log"))
        deadline = time.monotonic() + START_SECONDS
        for gateway in fleet:
            gateway.wait_ready(deadline)
    except BaseException:
        stop_fleet(fleet)
        raise
    return fleet


def stop_fleet(fleet: list[GatewayProcess]) -> None:
    """Stop every process of the fleet."""
    for gateway in fleet:
        gateway.stop()
