"""A real HAProxy running the example haproxy/haproxy.cfg, its ports moved to free loopback ones."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.helpers.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "haproxy" / "haproxy.cfg"
START_SECONDS = 20
SERVER_LINE = re.compile(r"^(\s*server\s+\S+\s+)127\.0\.0\.1:\d+(.*)$", re.M)


def configure(text: str, port: int, stats_port: int, servers: list[int]) -> str:
    """Return the example with its two listeners on the given ports and one server line per instance port."""
    text = text.replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{port}")
    text = text.replace("bind 127.0.0.1:8404", f"bind 127.0.0.1:{stats_port}")
    lines = SERVER_LINE.findall(text)
    if len(lines) < len(servers):
        raise ValueError(f"the example has {len(lines)} servers, {len(servers)} wanted")
    numbered = iter(range(len(lines)))

    def move(match: re.Match) -> str:
        i = next(numbered)
        return f"{match.group(1)}127.0.0.1:{servers[i]}{match.group(2)}" if i < len(servers) else ""

    return SERVER_LINE.sub(move, text)


class HAProxy:
    """haproxy -db (foreground) on the example configuration; .url is the balancer's front."""

    def __init__(self, servers: list[int], workdir: Path) -> None:
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if binary is None:
            raise RuntimeError("haproxy is not installed: run tests/helpers/install-system-deps.sh (make test does)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(configure(EXAMPLE.read_text(), self.port, self.stats_port, servers))
        self.log = workdir / "haproxy.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            self.wait_until(lambda states: len(states) == len(servers) and set(states.values()) == {"UP"})
        except BaseException:
            self.stop()
            raise

    def states(self) -> dict[str, str]:
        """Return each backend server's state as HAProxy sees it (UP, DOWN, "UP 1/2"...), from the stats CSV."""
        answer = requests.get(f"http://127.0.0.1:{self.stats_port}/haproxy;csv", timeout=5)
        rows = csv.DictReader(io.StringIO(answer.text.lstrip("# ")))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "gateways" and r["svname"] != "BACKEND"}

    def wait_until(self, check, seconds: float = START_SECONDS) -> dict[str, str]:
        """Return the servers' states once check(states) holds; raise with HAProxy's log after seconds."""
        deadline = time.monotonic() + seconds
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}: {self.output()}")
            try:
                states = self.states()
                if check(states):
                    return states
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"haproxy servers never reached the state wanted ({states}): {self.output()}")

    def output(self) -> str:
        """Return HAProxy's log so far (its last 4,000 characters)."""
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM; SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
