"""Many long streams at once: `make run` (waitress) and `make serve` (gunicorn + gevent) hold them all, /health answers
meanwhile; under gevent, a SQLite lock wait leaves the hub running (app/blocking.py). Capacity figures: bench/."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from app import blocking
from tests.conftest import BRIDGE_KEY
from tests.helpers.gateway_process import START_SECONDS, GatewayProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 40  # well past the 16 threads `make run` had, and gunicorn's 2x8
TICKS = 200  # the fake bridge's [[fake:slow]] answer: " tick" 200 times, chunk_delay apart
GUNICORN = [str(Path(sys.executable).parent / "gunicorn"), "--config", "gunicorn.conf.py", "--workers", "1"]


class Streams:
    """STREAMS streams read in threads: each notes when its first content came and what it read in all."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.started = 0
        self.finished = 0
        self.all_started = threading.Event()
        self.texts: list[str] = []
        self.threads = [threading.Thread(target=self._read, daemon=True) for _ in range(STREAMS)]

    def _read(self) -> None:
        body = {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": "[[fake:slow]]"}]}
        headers = {"Authorization": "Bearer sk-serve"}
        text, first = [], True
        with requests.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, stream=True, timeout=60) as r:
            for line in r.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                choices = json.loads(line[6:])["choices"]
                content = choices[0]["delta"].get("content") if choices else None
                if content:
                    text.append(content)
                    if first:
                        first = False
                        with self.lock:
                            self.started += 1
                            if self.started == STREAMS:
                                self.all_started.set()
        with self.lock:
            self.finished += 1
            self.texts.append("".join(text))


@pytest.mark.parametrize(
    "command", [None, GUNICORN], ids=["make run (python -m app, waitress)", "make serve (gunicorn, gevent)"]
)
def test_server_holds_many_long_streams_and_answers_health_meanwhile(bridge, tmp_path, command):
    if command is not None:
        pytest.importorskip("gevent", reason="make serve's server: pip install -r requirements-serve.txt")
    bridge.chunk_delay = 0.03  # each stream lasts about 6 s
    settings = {
        "LMARENA_BRIDGE_BASE_URL": bridge.url,
        "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
        "GATEWAY_API_KEYS": "sk-serve",
        # One key holds all 40 streams here: the per-key cap (8 by default) would refuse the 9th.
        "GATEWAY_MAX_IN_FLIGHT_PER_KEY": "0",
        "GATEWAY_ANALYTICS_PATH": str(tmp_path / "analytics.sqlite3"),
        "STORAGE_PATH": str(tmp_path / "storage" / "sessions.json"),
    }
    gateway = GatewayProcess(settings, tmp_path / "gateway.log", command)
    try:
        gateway.wait_ready(time.monotonic() + START_SECONDS)
        streams = Streams(gateway.url)
        for thread in streams.threads:
            thread.start()
        assert streams.all_started.wait(30), f"{streams.started} of {STREAMS} streams started: {gateway.output()}"
        with streams.lock:
            open_at_once = streams.started - streams.finished
        health = requests.get(f"{gateway.url}/health", timeout=10)
        for thread in streams.threads:
            thread.join(timeout=60)
    finally:
        gateway.stop()
    assert open_at_once == STREAMS  # every stream had content before the first one ended: all held at once
    assert health.status_code == 200
    assert streams.texts == [" tick" * TICKS] * STREAMS


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()  # released only when told, so the waiter below waits for as long as it takes
conn.execute("COMMIT")
"""

UNDER_GEVENT = """
from gevent import monkey

monkey.patch_all()

import json, sqlite3, subprocess, sys
from datetime import UTC, datetime, timedelta

import gevent

from app import blocking
from app.store.base import Session
from app.store.file_store import JsonSessionStore

database, sessions, holder_code = sys.argv[1:4]
holder = subprocess.Popen([sys.executable, "-c", holder_code, database], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
holder.stdout.readline()
ticks = 0


def tick():
    # Runs only while the hub runs: it releases the other process's lock after 20 turns.
    global ticks
    while ticks < 20:
        gevent.sleep(0.005)
        ticks += 1
    holder.stdin.write(b"go\\n")
    holder.stdin.flush()


conn = sqlite3.connect(database, timeout=10, isolation_level=None, factory=blocking.sqlite_factory())
ticker = gevent.spawn(tick)
conn.execute("BEGIN IMMEDIATE")  # waits in a real thread for the holder, which waits for the ticker
conn.execute("COMMIT")
holder.wait(timeout=10)
store = JsonSessionStore(sessions)
now = datetime.now(UTC)
ids = {"session_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6", "message_id": "4fa85f64-5717-4562-b3fc-2c963f66afa7"}
store.register(
    Session(domain="lmarena.ai", session_name="green", **ids), now=now, limit=10, active_since=now - timedelta(hours=1)
)
stored = store.get("lmarena.ai", "green").session_id
print(json.dumps({"connection": type(conn).__name__, "ticks": ticks, "stored": stored}))
"""


def test_sqlite_lock_wait_under_gevent_leaves_the_hub_running(tmp_path):
    pytest.importorskip("gevent", reason="make serve's server: pip install -r requirements-serve.txt")
    database = tmp_path / "locked.sqlite3"
    sqlite3.connect(database).execute("PRAGMA journal_mode = WAL").close()
    done = subprocess.run(
        [sys.executable, "-c", UNDER_GEVENT, str(database), str(tmp_path / "sessions.json"), HOLDER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Had the wait blocked the hub, the ticker could not have released the lock: "database is locked" after 10 s.
    assert json.loads(done.stdout) == {
        "connection": "OffHubConnection",
        "ticks": 20,
        "stored": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    }


def test_blocking_calls_run_in_place_without_gevent():
    assert blocking.sqlite_factory() is sqlite3.Connection
    assert blocking.call(threading.get_ident) == threading.get_ident()
