"""Heartbeats: kept beside the sessions file (or in one Redis hash field), never rewriting registrations."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from app.errors import SessionLimitReached
from app.store import get_store
from app.store.base import Session, isoformat, utcnow
from app.store.file_store import JsonSessionStore, last_seen_path
from app.store.redis_store import RedisSessionStore

WORKER = str(Path(__file__).parent / "helpers" / "store_worker.py")
BEAT = {"domain": "lmarena.ai", "session_name": "team-a"}


def register(store, name: str, when, limit: int = 100):
    session = Session("lmarena.ai", name, str(uuid.uuid4()), str(uuid.uuid4()))
    return store.register(session, now=when, limit=limit, active_since=when - timedelta(minutes=5))


def test_heartbeat_leaves_the_sessions_file_as_it_was(tmp_path):
    path = tmp_path / "sessions.json"
    store = JsonSessionStore(str(path))
    register(store, "team-a", utcnow() - timedelta(days=2))
    before, stat = path.read_bytes(), path.stat()
    later = utcnow()
    assert store.heartbeat("lmarena.ai", "team-a", now=later).last_seen_at == isoformat(later)
    assert path.read_bytes() == before
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert store.heartbeat("lmarena.ai", "ghost", now=later) is None
    assert JsonSessionStore(str(path)).seen.all() == {("lmarena.ai", "team-a"): isoformat(later)}


def test_heartbeat_shows_in_every_read_and_an_older_one_changes_nothing(tmp_path):
    store = JsonSessionStore(str(tmp_path / "sessions.json"))
    registered = register(store, "team-a", utcnow())[0]
    store.heartbeat("lmarena.ai", "team-a", now=utcnow() - timedelta(days=1))
    assert store.get("lmarena.ai", "team-a").last_seen_at == registered.last_seen_at
    later = utcnow() + timedelta(seconds=1)
    store.heartbeat("lmarena.ai", "team-a", now=later)
    other = JsonSessionStore(str(tmp_path / "sessions.json"))  # another process's view
    assert other.get("lmarena.ai", "team-a").last_seen_at == isoformat(later)
    assert [s.last_seen_at for s in other.list()] == [isoformat(later)]
    assert [s.last_seen_at for s in other.list("lmarena.ai")] == [isoformat(later)]


def test_active_count_uses_heartbeats(tmp_path):
    store = JsonSessionStore(str(tmp_path / "sessions.json"))
    register(store, "old", utcnow() - timedelta(hours=1))
    store.heartbeat("lmarena.ai", "old", now=utcnow())
    with pytest.raises(SessionLimitReached):
        register(store, "new", utcnow(), limit=1)


def test_cleanup_keeps_heartbeating_sessions_and_removes_the_heartbeats_of_those_it_deletes(tmp_path):
    store = JsonSessionStore(str(tmp_path / "sessions.json"))
    for name in ("alive", "stale"):
        register(store, name, utcnow() - timedelta(days=40))
    store.heartbeat("lmarena.ai", "alive", now=utcnow())
    store.heartbeat("lmarena.ai", "stale", now=utcnow() - timedelta(days=35))
    month_ago = utcnow() - timedelta(days=30)
    assert [s.session_name for s in store.cleanup(older_than=month_ago, dry_run=True)] == ["stale"]
    assert set(store.seen.all()) == {("lmarena.ai", "alive"), ("lmarena.ai", "stale")}
    assert [s.session_name for s in store.cleanup(older_than=month_ago)] == ["stale"]
    assert [s.session_name for s in store.list()] == ["alive"]
    assert set(store.seen.all()) == {("lmarena.ai", "alive")}
    assert store.delete("lmarena.ai", "alive") is True
    assert store.seen.all() == {}
    assert store.heartbeat("lmarena.ai", "alive", now=utcnow()) is None


def test_api_shows_the_heartbeat_and_counts_the_session_active(make_app, admin):
    app = make_app()
    client = app.test_client()
    with app.app_context():
        register(get_store(), "team-a", utcnow() - timedelta(days=2))
    path = Path(app.config["STORAGE_PATH"])
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    beat = client.post("/session/heartbeat", json=BEAT, headers=admin).get_json()["session"]
    assert beat["active"] is True
    assert (path.read_bytes(), path.stat().st_mtime_ns) == (before, mtime)
    shown = client.get("/session/lmarena.ai/team-a", headers=admin).get_json()["session"]
    listed = client.get("/session/list", headers=admin).get_json()["data"]
    assert shown["last_seen_at"] == beat["last_seen_at"] == listed[0]["last_seen_at"]
    assert shown["active"] is listed[0]["active"] is True
    assert client.post("/session/heartbeat", json={**BEAT, "session_name": "ghost"}, headers=admin).status_code == 404


def test_redis_heartbeat_touches_only_the_stamp(redis_server):
    store = RedisSessionStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    register(store, "team-a", utcnow() - timedelta(days=2))
    key = store._keys("lmarena.ai", "team-a")[0]
    record = store.client.hget(key, "record")
    later = utcnow()
    assert store.heartbeat("lmarena.ai", "team-a", now=later).last_seen_at == isoformat(later)
    assert store.client.hget(key, "record") == record
    assert store.list()[0].last_seen_at == isoformat(later)
    store.close()


def _beaters(path, tmp_path, count, per_worker, rounds):
    return [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                "heartbeat",
                str(path),
                f"p{i}",
                str(per_worker),
                str(rounds),
                str(tmp_path / f"ack-{i}.txt"),
            ]
        )
        for i in range(count)
    ]


def _last_acks(tmp_path) -> dict[str, str]:
    last: dict[str, str] = {}
    for ack in sorted(tmp_path.glob("ack-*.txt")):
        for line in ack.read_text().splitlines():
            if line.count(" ") == 1:  # a killed worker may leave half a line
                name, stamp = line.split()
                last[name] = max(stamp, last.get(name, ""))
    return last


def _seed(path, workers, per_worker):
    store = JsonSessionStore(str(path))
    for i in range(workers):
        for n in range(per_worker):
            register(store, f"p{i}-{n}", utcnow() - timedelta(days=2))
    return path.read_bytes()


def _integrity(path) -> str:
    with sqlite3.connect(last_seen_path(str(path))) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.slow  # 4 worker processes
def test_processes_heartbeating_at_once_lose_nothing(tmp_path):
    path = tmp_path / "sessions.json"
    before = _seed(path, 4, 20)
    workers = _beaters(path, tmp_path, count=4, per_worker=20, rounds=25)
    assert [w.wait(timeout=120) for w in workers] == [0] * 4
    acked = _last_acks(tmp_path)
    assert len(acked) == 80
    stored = {s.session_name: s.last_seen_at for s in JsonSessionStore(str(path)).list()}
    assert stored == acked
    assert path.read_bytes() == before
    assert _integrity(path) == "ok"


@pytest.mark.slow  # 4 worker processes, 2 killed mid-run
def test_sigkill_while_heartbeating_keeps_both_files_valid(tmp_path):
    path = tmp_path / "sessions.json"
    before = _seed(path, 4, 20)
    workers = _beaters(path, tmp_path, count=4, per_worker=20, rounds=2000)
    deadline = time.monotonic() + 60
    while len(_last_acks(tmp_path)) < 80 and time.monotonic() < deadline:
        time.sleep(0.05)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    assert [w.wait(timeout=60) for w in workers] == [-signal.SIGKILL] * 4
    assert path.read_bytes() == before
    json.loads(before)
    assert _integrity(path) == "ok"
    stored = {s.session_name: s.last_seen_at for s in JsonSessionStore(str(path)).list()}
    # A kill can land between the commit and the acknowledgement, never the other way round.
    assert all(stored[name] >= stamp for name, stamp in _last_acks(tmp_path).items())


def test_threads_registering_deleting_and_heartbeating_at_once_never_deadlock(tmp_path):
    # delete holds the heartbeat table while it waits for the file lock; register holds the file lock and reads it
    store = JsonSessionStore(str(tmp_path / "sessions.json"), lock_timeout=5)
    errors: list[BaseException] = []

    def run(job) -> None:
        try:
            for i in range(60):
                job(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    jobs = [
        lambda i: register(store, f"s{i % 5}", utcnow()),
        lambda i: store.delete("lmarena.ai", f"s{i % 5}"),
        lambda i: store.heartbeat("lmarena.ai", f"s{i % 5}", now=utcnow()),
        lambda i: store.cleanup(older_than=utcnow() - timedelta(seconds=0.01)),
    ]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert time.monotonic() - started < 5  # a deadlock would run into the 5 s lock timeout
