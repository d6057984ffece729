"""Session store throughput at 10,000 sessions: lookups/s, registrations/s and heartbeats/s from 1 and 8 processes.

The JSON store (app/store/file_store.py: one file, file lock, fsync + os.replace per change) always; the Redis store
too when redis-server is installed (a private one on a free loopback port, no persistence).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.store.base import Session, isoformat  # noqa: E402

DOMAINS = ("lmarena.ai", "canary.lmarena.ai", "alpha.lmarena.ai", "beta.lmarena.ai")
MAX_OPS = 1_000_000  # a bound for every loop; the clock ends them long before


def session_name(i: int) -> str:
    return f"user-{i:05d}"


def uuid_for(i: int, salt: int = 0) -> str:
    return f"{i:08x}-{salt:04x}-4000-8000-{i * 7919 % 16**12:012x}"


def table(sessions: int, now: datetime) -> dict[str, dict[str, dict]]:
    """Return {domain: {name: record}} with `sessions` records, last seen over the past 30 days (few active)."""
    rng = random.Random(1)
    data: dict[str, dict[str, dict]] = {d: {} for d in DOMAINS}
    for i in range(sessions):
        seen = isoformat(now - timedelta(seconds=rng.uniform(0, 30 * 86400)))
        data[DOMAINS[i % len(DOMAINS)]][session_name(i)] = {
            "session_id": uuid_for(i),
            "message_id": uuid_for(i, 1),
            "bridge_base_url": None,
            "models": {},
            "created_at": seen,
            "updated_at": seen,
            "last_seen_at": seen,
        }
    return data


def write_json_store(path: Path, sessions: int) -> None:
    """Write a sessions.json holding `sessions` sessions, in the store's own format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": 1, "sessions": table(sessions, datetime.now(UTC))}
    path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def percentiles_us(values: list[int]) -> dict[str, float] | None:
    """Return p50/p99/max/mean of ns values in µs."""
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1000  # noqa: E731
    return {"p50": pick(50), "p99": pick(99), "max": ordered[-1] / 1000, "mean": sum(ordered) / len(ordered) / 1000}


def open_store(kind: str, where: str):
    """Open a JSON store at a path, or a Redis store at a URL."""
    if kind == "json":
        from app.store.file_store import JsonSessionStore

        return JsonSessionStore(where)
    from app.store.redis_store import RedisSessionStore

    return RedisSessionStore(where)


def lookups(kind: str, where: str, sessions: int, seconds: float, queue=None) -> dict:
    """Look random sessions up for `seconds`; return ops/s and per-op latency."""
    store = open_store(kind, where)
    rng = random.Random(2)
    keys = [(DOMAINS[i % len(DOMAINS)], session_name(i)) for i in (rng.randrange(sessions) for _ in range(4096))]
    store.get(*keys[0])  # the first read parses the file; a running gateway has done it long ago
    times, missing = [], 0
    deadline = time.monotonic() + seconds
    for n in range(MAX_OPS):
        if time.monotonic() >= deadline:
            break
        started = time.perf_counter_ns()
        found = store.get(*keys[n % len(keys)])
        times.append(time.perf_counter_ns() - started)
        missing += found is None
    store.close()
    result = {"ops": len(times), "ops_per_s": len(times) / seconds, "latency_us": percentiles_us(times)}
    result["missing"] = missing
    if queue is not None:
        queue.put(result)
    return result


def registrations(kind: str, where: str, sessions: int, seconds: float, writer: int, start, queue) -> None:
    """Register sessions for `seconds` after `start` is set: alternately a new name and an existing one."""
    store = open_store(kind, where)
    rng = random.Random(100 + writer)
    times = []
    start.wait(60)
    deadline = time.monotonic() + seconds
    for n in range(MAX_OPS):
        if time.monotonic() >= deadline:
            break
        i = rng.randrange(sessions)
        name = f"w{writer}-{n:06d}" if n % 2 == 0 else session_name(i)
        domain = DOMAINS[i % len(DOMAINS)]
        now = datetime.now(UTC)
        session = Session(domain, name, uuid_for(i, 2 + writer), uuid_for(i, 3))
        started = time.perf_counter_ns()
        store.register(session, now=now, limit=10**6, active_since=now - timedelta(seconds=300))
        times.append(time.perf_counter_ns() - started)
    store.close()
    queue.put(times)


def heartbeats(kind: str, where: str, sessions: int, seconds: float, writer: int, start, queue) -> None:
    """Heartbeat random existing sessions for `seconds` after `start` is set."""
    store = open_store(kind, where)
    rng = random.Random(200 + writer)
    times = []
    start.wait(60)
    deadline = time.monotonic() + seconds
    for _ in range(MAX_OPS):
        if time.monotonic() >= deadline:
            break
        i = rng.randrange(sessions)
        started = time.perf_counter_ns()
        if store.heartbeat(DOMAINS[i % len(DOMAINS)], session_name(i), now=datetime.now(UTC)) is None:
            raise RuntimeError(f"heartbeat found no session {session_name(i)}")
        times.append(time.perf_counter_ns() - started)
    store.close()
    queue.put(times)


def writers(kind: str, where: str, sessions: int, seconds: float, count: int, target=registrations) -> dict:
    """Run `count` writer processes at once; return changes/s in total and per-op latency."""
    context = multiprocessing.get_context("fork")
    start, queue = context.Event(), context.Queue()
    procs = [
        context.Process(target=target, args=(kind, where, sessions, seconds, w, start, queue)) for w in range(count)
    ]
    for proc in procs:
        proc.start()
    start.set()
    times: list[int] = []
    for _ in procs:
        times += queue.get(timeout=seconds + 120)
    for proc in procs:
        proc.join(timeout=30)
    return {
        "writers": count,
        "ops": len(times),
        "ops_per_s": len(times) / seconds,
        "latency_ms": {k: v / 1000 for k, v in (percentiles_us(times) or {}).items()},
    }


def readers(kind: str, where: str, sessions: int, seconds: float, count: int) -> dict:
    """Run `count` reader processes at once; return lookups/s in total and the slowest reader's p99."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=lookups, args=(kind, where, sessions, seconds, queue)) for _ in range(count)]
    for proc in procs:
        proc.start()
    found = [queue.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    return {
        "readers": count,
        "ops_per_s": sum(r["ops_per_s"] for r in found),
        "latency_us": {"p99": max(r["latency_us"]["p99"] for r in found)},
    }


def lookups_while_writing(kind: str, where: str, sessions: int, seconds: float) -> dict:
    """Look up in one process while another registers: each change makes the other processes' next read re-parse."""
    context = multiprocessing.get_context("fork")
    start, queue = context.Event(), context.Queue()
    writer = context.Process(target=registrations, args=(kind, where, sessions, seconds, 99, start, queue))
    writer.start()
    start.set()
    result = lookups(kind, where, sessions, seconds)
    queue.get(timeout=seconds + 120)
    writer.join(timeout=30)
    return result


class RedisServer:
    """A private redis-server on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def fill_redis(url: str, sessions: int) -> None:
    """Register `sessions` sessions through the store itself."""
    store = open_store("redis", url)
    now = datetime.now(UTC)
    for i in range(sessions):
        session = Session(DOMAINS[i % len(DOMAINS)], session_name(i), uuid_for(i), uuid_for(i, 1))
        store.register(session, now=now - timedelta(days=1), limit=10**6, active_since=now)
    store.close()


def bench_backend(kind: str, where: str, sessions: int, seconds: float) -> dict:
    """Return lookups and registrations (1 and 8 writers) for one backend already holding `sessions`."""
    result = {"backend": kind, "sessions": sessions, "lookups": lookups(kind, where, sessions, seconds)}
    result["lookups_8_readers"] = readers(kind, where, sessions, seconds, 8)
    result["lookups_while_1_writer"] = lookups_while_writing(kind, where, sessions, seconds)
    result["register_1_writer"] = writers(kind, where, sessions, seconds, 1)
    result["register_8_writers"] = writers(kind, where, sessions, seconds, 8)
    result["heartbeat_1_process"] = writers(kind, where, sessions, seconds, 1, heartbeats)
    result["heartbeat_8_processes"] = writers(kind, where, sessions, seconds, 8, heartbeats)
    if kind == "json":
        result["file_bytes"] = Path(where).stat().st_size
    return result


def run(sessions: int = 10_000, seconds: float = 5.0, workdir: Path | None = None) -> list[dict]:
    """Bench the JSON store (and Redis when installed); return one result per backend."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="store-", dir=HERE / ".cache")) if own else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        path = workdir / "sessions.json"
        write_json_store(path, sessions)
        results.append(bench_backend("json", str(path), sessions, seconds))
        if shutil.which("redis-server"):
            server = RedisServer(workdir)
            try:
                fill_redis(server.url, sessions)
                results.append(bench_backend("redis", server.url, sessions, seconds))
            finally:
                server.stop()
        else:
            results.append({"backend": "redis", "unavailable": "redis-server is not installed"})
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


if __name__ == "__main__":
    (HERE / ".cache").mkdir(exist_ok=True)
    print(json.dumps(run(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 5.0), indent=2))
