"""The JSON store under several OS processes, kills, corruption, lock contention and a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from filelock import FileLock

from app import create_app
from app.config import ConfigError
from app.errors import StoreCorrupt, StoreError
from app.store.base import Session, utcnow
from app.store.file_store import JsonSessionStore
from app.store.locked_file import LockedJsonFile

WORKER = str(Path(__file__).parent / "helpers" / "store_worker.py")


def _workers(path, tmp_path, count, per_worker):
    return [
        subprocess.Popen(
            [sys.executable, WORKER, "register", str(path), f"p{i}", str(per_worker), str(tmp_path / f"ack-{i}.txt")]
        )
        for i in range(count)
    ]


class ValidityWatcher(threading.Thread):
    """Parse the store file over and over while writers run; remember any read that is not valid JSON."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.reads, self.invalid = path, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                continue
            try:
                json.loads(data)["sessions"]
                self.reads += 1
            except (ValueError, KeyError) as exc:
                self.invalid.append(repr(exc))


@contextmanager
def watching(path: Path):
    """Check the store file stays valid JSON for as long as the block runs."""
    watcher = ValidityWatcher(path)
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop.set()
        watcher.join()


def _acknowledged(tmp_path) -> set[str]:
    return {line for ack in tmp_path.glob("ack-*.txt") for line in ack.read_text().split()}


@pytest.mark.slow  # 8 worker processes, 1,600 registrations
def test_eight_processes_lose_no_registration(tmp_path):
    path = tmp_path / "sessions.json"
    with watching(path) as watcher:
        workers = _workers(path, tmp_path, count=8, per_worker=200)
        assert [w.wait(timeout=240) for w in workers] == [0] * 8
    names = {s.session_name for s in JsonSessionStore(str(path)).list("lmarena.ai")}
    assert len(names) == 1600
    assert names == _acknowledged(tmp_path)
    assert watcher.invalid == []
    assert watcher.reads > 0


@pytest.mark.slow  # 8 worker processes, killed mid-run
def test_sigkill_mid_run_leaves_a_valid_file_and_every_acknowledged_write(tmp_path):
    path = tmp_path / "sessions.json"
    with watching(path) as watcher:
        workers = _workers(path, tmp_path, count=8, per_worker=400)
        deadline = time.monotonic() + 60
        while len(_acknowledged(tmp_path)) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        for worker in workers[:4]:
            worker.send_signal(signal.SIGKILL)
        results = [w.wait(timeout=240) for w in workers]
    assert results[:4] == [-signal.SIGKILL] * 4 and results[4:] == [0] * 4
    stored = {s.session_name for s in JsonSessionStore(str(path)).list("lmarena.ai")}
    assert _acknowledged(tmp_path) <= stored
    assert watcher.invalid == []
    json.loads(path.read_bytes())


def test_corrupt_file_stops_startup_and_is_kept(tmp_path):
    path = tmp_path / "sessions.json"
    path.write_bytes(b'{"version": 1, "sessions": {"lmarena.ai": {"a": ')
    before = path.read_bytes()
    with pytest.raises(ConfigError) as caught:
        create_app({"GATEWAY_ENV_FILE": "", "STORAGE_PATH": str(path)})
    assert "STORAGE_PATH" in str(caught.value) and "left untouched" in str(caught.value)
    assert path.read_bytes() == before


def test_file_corrupted_while_running_refuses_reads_and_writes(tmp_path):
    path = tmp_path / "sessions.json"
    store = JsonSessionStore(str(path))
    now = utcnow()
    store.register(
        Session("lmarena.ai", "a", str(uuid.uuid4()), str(uuid.uuid4())), now=now, limit=10, active_since=now
    )
    path.write_text("not json at all")
    with pytest.raises(StoreCorrupt):
        store.get("lmarena.ai", "a")
    with pytest.raises(StoreCorrupt):
        store.register(
            Session("lmarena.ai", "b", str(uuid.uuid4()), str(uuid.uuid4())), now=now, limit=10, active_since=now
        )
    assert path.read_text() == "not json at all"


def test_lock_held_elsewhere_times_out_with_clear_error(tmp_path):
    path = tmp_path / "sessions.json"
    store = JsonSessionStore(str(path), lock_timeout=0.3)
    with FileLock(str(path) + ".lock"):
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            store.delete("lmarena.ai", "a")
    assert caught.value.code == "store_busy"
    assert caught.value.retry_after == 1
    assert time.monotonic() - started < 2


def test_full_disk_changes_nothing(tmp_path):
    path = tmp_path / "sessions.json"
    store = JsonSessionStore(str(path))
    now = utcnow()
    for i in range(20):
        store.register(
            Session("lmarena.ai", f"s{i}", str(uuid.uuid4()), str(uuid.uuid4())),
            now=now,
            limit=100,
            active_since=now - timedelta(hours=1),
        )
    before = path.read_bytes()
    out = subprocess.run(
        [sys.executable, WORKER, "fsize-limit", str(path), str(len(before) + 10)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(out.stdout)["error"] == "store_unavailable", out.stderr
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sessions-")] == []


def test_reads_reuse_the_parsed_file_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "sessions.json"
    writer = JsonSessionStore(str(path))
    reader = JsonSessionStore(str(path))
    now = utcnow()
    writer.register(
        Session("lmarena.ai", "a", str(uuid.uuid4()), str(uuid.uuid4())), now=now, limit=10, active_since=now
    )
    parses = []
    original = LockedJsonFile._parse
    monkeypatch.setattr(LockedJsonFile, "_parse", lambda self: parses.append(1) or original(self))
    for _ in range(100):
        assert reader.get("lmarena.ai", "a") is not None
    assert len(parses) == 1
    writer.register(
        Session("lmarena.ai", "b", str(uuid.uuid4()), str(uuid.uuid4())), now=now, limit=10, active_since=now
    )
    assert reader.get("lmarena.ai", "b") is not None
    assert len(parses) == 2


def test_store_file_is_private_to_the_app_user(tmp_path):
    path = tmp_path / "store" / "sessions.json"
    store = JsonSessionStore(str(path))
    now = utcnow()
    store.register(
        Session("lmarena.ai", "a", str(uuid.uuid4()), str(uuid.uuid4())), now=now, limit=10, active_since=now
    )
    store.heartbeat("lmarena.ai", "a", now=utcnow())
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    heartbeats = list(path.parent.glob("sessions-heartbeats.sqlite3*"))
    assert len(heartbeats) == 3  # the table, its WAL and its shared-memory index
    assert all(os.stat(f).st_mode & 0o777 == 0o600 for f in heartbeats)
