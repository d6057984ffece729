"""The gateway as `python -m app` runs it (`make run`): real processes on free loopback ports, one or a fleet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.helpers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
CLIENT_KEY = "sk-run"
START_SECONDS = 30  # three processes importing Flask at once on a busy 2-core machine


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


class GatewayProcess:
    """One gateway process; settings are environment variables (conftest already cleared the developer's)."""

    def __init__(self, settings: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "GATEWAY_ENV_FILE": "", **settings, "GATEWAY_PORT": str(self.port)}
        with open(log, "wb") as out:  # a file, not a pipe: a chatty process never blocks on a full pipe
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
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
