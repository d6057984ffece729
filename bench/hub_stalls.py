"""Under gevent, how long each blocking part of the gateway holds the hub (and so every stream of its process).

Run in a process gevent has patched, as gunicorn's gevent worker is: a ticker greenlet sleeps 1 ms again and again
and notes how late it wakes; each operation runs ROUNDS times in another greenlet, and the ticker's worst lateness
during it is the stall every other stream of the process saw. The operations are the gateway's own, on a temporary
folder: the analytics writer's batch (200 events), a session heartbeat (SQLite), a session registration (the JSON
file rewritten and fsynced, 10,000 sessions), a rate-limit lease (SQLite); each SQLite one twice, alone and while
another process (not gevent) holds that database's write lock for HOLD s at a time, as a second worker would.

    bench/.venv/bin/python bench/hub_stalls.py    # prints one JSON object; run.py --only stalls keeps it
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from store_bench import write_json_store  # noqa: E402

from app.analytics.recorder import Recorder  # noqa: E402
from app.ratelimit import SQLiteCells  # noqa: E402
from app.store.base import Session  # noqa: E402
from app.store.file_store import JsonSessionStore, last_seen_path  # noqa: E402

ROUNDS = 20
TICK = 0.001
HOLD = 0.05  # seconds the other process holds the write lock each time
HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
end = time.monotonic() + float(sys.argv[3])
print("holding", flush=True)
while time.monotonic() < end:
    conn.execute("BEGIN IMMEDIATE")
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    time.sleep(0.005)
"""


class Ticker:
    """A greenlet that wakes every TICK s and keeps its worst lateness since the last reset."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.running = True
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while self.running:
            began = time.perf_counter()
            gevent.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - began - TICK)

    def stop(self) -> None:
        self.running = False
        self.greenlet.join(timeout=2)


def measure(ticker: Ticker, operation) -> dict:
    """Run operation ROUNDS times; return its time and the hub's worst stall during each, in ms."""
    took, stalls = [], []
    for _ in range(ROUNDS):
        gevent.sleep(0.005)  # let the ticker run once before each round
        ticker.worst = 0.0
        began = time.perf_counter()
        gevent.spawn(operation).get(timeout=60)
        took.append((time.perf_counter() - began) * 1000)
        gevent.sleep(2 * TICK)  # the ticker's wake-up after the operation reports what it waited
        stalls.append(ticker.worst * 1000)
    return {
        "operation_ms_p50": round(statistics.median(took), 3),
        "operation_ms_max": round(max(took), 3),
        "hub_stall_ms_p50": round(statistics.median(stalls), 3),
        "hub_stall_ms_max": round(max(stalls), 3),
    }


def holder(path: str, seconds: float) -> subprocess.Popen:
    """Start a plain (not gevent) process that takes the database's write lock again and again for seconds."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(HOLD), str(seconds)], stdout=subprocess.PIPE)
    proc.stdout.readline()
    return proc


def event(i: int) -> dict:
    return {
        "ts": time.time(),
        "request_id": f"req-{i}",
        "kind": "chat",
        "provider": "lmarena_bridge",
        "model": "bench",
        "stream": True,
        "status": 200,
        "latency_ms": 30_000.0,
        "ttfb_ms": 1.0,
    }


def run() -> dict:
    """Measure every operation, alone and (SQLite) under another process's lock; return the figures."""
    ticker = Ticker()
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="hub-stalls-") as folder:
        sessions = Path(folder) / "sessions.json"
        write_json_store(sessions, 10_000)
        store = JsonSessionStore(str(sessions))
        now = datetime.now(UTC)
        name = next(iter(store.file.read()["lmarena.ai"]))
        recorder = Recorder(str(Path(folder) / "analytics.sqlite3"))
        cells = SQLiteCells(str(Path(folder) / "ratelimit.sqlite3"))
        counter = iter(range(10**9))

        def analytics() -> None:
            for _ in range(200):
                recorder.record(event(next(counter)))
            recorder.flush()

        def heartbeat() -> None:
            store.heartbeat("lmarena.ai", name, now=datetime.now(UTC))

        def register() -> None:
            i = next(counter)
            session = Session(
                domain="lmarena.ai",
                session_name=f"stall-{i % 50}",
                session_id=f"{i:08x}-0000-4000-8000-000000000000",
                message_id=f"{i:08x}-0001-4000-8000-000000000000",
            )
            store.register(session, now=datetime.now(UTC), limit=100_000, active_since=now - timedelta(days=1))

        def lease() -> None:
            cells.advance(f"key-{next(counter) % 10}", time.time(), 0.001, 1.0, want=10)

        operations = {
            "analytics batch (200 events)": (analytics, recorder.path),
            "session heartbeat": (heartbeat, last_seen_path(str(sessions))),
            "rate-limit lease": (lease, cells.path),
        }
        for label, (operation, database) in operations.items():
            cases[label] = measure(ticker, operation)
            proc = holder(database, ROUNDS * (HOLD + 0.02) + 30)
            try:
                cases[f"{label}, another process writing"] = measure(ticker, operation)
            finally:
                proc.kill()
                proc.wait()
        cases["session registration (10,000 sessions, fsync)"] = measure(ticker, register)
        recorder.close()
        cells.close()
        store.close()
    ticker.stop()
    return {"rounds": ROUNDS, "tick_ms": TICK * 1000, "hold_ms": HOLD * 1000, "cases": cases}


def main() -> int:
    print(json.dumps(run(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
