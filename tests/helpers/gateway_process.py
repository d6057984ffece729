"""The gateway as `python -m app` (`make run`) or gunicorn runs it: real processes on free loopback ports, one or a
fleet."""

from __future__ import annotations

import os
import signal
import socket
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


def gunicorn_command(port: int, workers: int = 2, threads: int = 8) -> list[str]:
    """Return the gunicorn command line an instance of a fleet runs (README: "Running several instances")."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        # Longer than HAProxy keeps an idle connection to an instance (pool-purge-delay, 5 s): the instance never
        # closes one just as HAProxy sends a request on it.
        "--keep-alive",
        "10",
        "app:create_app()",
    ]


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
    """One gateway process (with gunicorn: its master and workers, in a process group of their own); settings are
    environment variables (conftest already cleared the developer's)."""

    def __init__(
        self, settings: dict[str, str], log: Path, command: list[str] | None = None, *, gunicorn: bool = False
    ) -> None:
        # command: `python -m app` unless given (tests/test_serve.py starts gunicorn, which reads GATEWAY_PORT too).
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "GATEWAY_ENV_FILE": "", **settings, "GATEWAY_PORT": str(self.port)}
        command = command or (gunicorn_command(self.port) if gunicorn else [sys.executable, "-m", "app"])
        with open(log, "wb") as out:  # a file, not a pipe: a chatty process never blocks on a full pipe
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=gunicorn
            )
        self.group = gunicorn

    def kill(self) -> None:
        """SIGKILL the instance, every worker of it at once, as a crash or the OOM killer would; return once its
        port refuses connections (a worker may outlive its master by a moment)."""
        if self.group:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.kill()
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.01)
        raise RuntimeError(f"port {self.port} still answers 10 s after SIGKILL")

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
        """Stop the process (SIGTERM, then SIGKILL after 10 s; gunicorn's workers with their master)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.group:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # a worker the master could not stop
            except ProcessLookupError:
                pass


def start_fleet(
    count: int, settings: dict[str, str] | list[dict[str, str]], logs: Path, *, gunicorn: bool = False
) -> list[GatewayProcess]:
    """Start count gateway processes at once (the same settings, or one dict each); return them when all answer."""
    logs.mkdir(parents=True, exist_ok=True)
    fleet: list[GatewayProcess] = []
    each = settings if isinstance(settings, list) else [settings] * count
    try:
        for number in range(count):
            fleet.append(GatewayProcess(each[number], logs / f"gateway-{number}.log", gunicorn=gunicorn))
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
