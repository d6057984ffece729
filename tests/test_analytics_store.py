"""The analytics store: schema, aggregates on known inputs, counters, queue limits, locks, processes and fork."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from app.analytics import (
    BUCKETS,
    SCHEMA_VERSION,
    Recorder,
    cleanup,
    connect,
    metrics_snapshot,
    percentile,
    sessions,
    summary,
    timeseries,
)
from app.analytics import writer as analytics_writer
from app.errors import AnalyticsError, StoreError
from tests.helpers.analytics_worker import make_event

WORKER = str(Path(__file__).parent / "helpers" / "analytics_worker.py")
NOW = 1_800_000_000.0  # a multiple of every bucket width used below


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "analytics" / "events.db")


@pytest.fixture
def conn(path):
    conn = connect(path)
    yield conn
    conn.close()


@pytest.fixture
def recorder(path):
    # A long interval: only flush() writes, so tests decide when events land.
    recorder = Recorder(path, flush_interval=60)
    yield recorder
    recorder.close()


def write(conn, *events):
    """Write events the way the recorder's thread does, without the thread."""
    rows, counters, invalid = analytics_writer.build((NOW, event) for event in events)
    assert invalid == 0
    analytics_writer.write_batch(conn, rows, counters, pid=os.getpid())


def req(ts=NOW - 1, **fields):
    return {"ts": ts, "provider": "lmarena_bridge", "model": "gpt-5", "status": 200, **fields}


def count_events(conn, where="1"):
    return conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}").fetchone()[0]


def dead_pid():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(child.stdout)  # reaped by run(), so no zombie answers os.kill(pid, 0)


def test_connect_creates_private_wal_database(path, conn):
    write(conn, req())
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path + "-wal").st_mode & 0o777 == 0o600
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    connect(path).close()  # a second open finds the schema and changes nothing
    assert count_events(conn) == 1


def test_connect_refuses_a_newer_schema(path, conn):
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(AnalyticsError, match="newer") as caught:
        connect(path)
    assert isinstance(caught.value, StoreError) and caught.value.status_code == 503


def test_unusable_path_fails_at_start_up(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(AnalyticsError, match="cannot be created"):
        Recorder(str(tmp_path / "file" / "events.db"))


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        (list(range(1, 21)), 50, 10),
        (list(range(1, 21)), 95, 19),
        (list(range(1, 21)), 100, 20),
        (list(range(1, 11)), 95, 10),
        ([1, 2], 50, 1),
        ([7], 95, 7),
        ([], 50, None),
    ],
)
def test_percentile_is_nearest_rank(values, p, expected):
    assert percentile(values, p) == expected


def test_summary_aggregates_known_requests(conn):
    latencies = list(range(10, 210, 10))  # 20 values: p50 = 100, p95 = 190
    for i, latency in enumerate(latencies):
        write(conn, req(latency_ms=latency, prompt_tokens=2, completion_tokens=None if i % 2 else 3))
    write(
        conn,
        req(provider="yupp2api", status=502, latency_ms=40, error_code="upstream_error"),
        req(provider="yupp2api", status=200, latency_ms=10, stream=True, ttfb_ms=4, error_code="stream_broken"),
        req(provider="yupp2api", status=200, latency_ms=20, stream=True, ttfb_ms=8),
        req(provider="yupp2api", status=200, latency_ms=30, stream=False, ttfb_ms=999),  # not a stream: no TTFB
        req(provider="yupp2api", status=200, latency_ms=99999, ts=NOW - 3601),  # outside the window
        req(provider="yupp2api", kind="fallback", status=500),  # a custom event is not a request
    )
    bridge, yupp = summary(conn, 3600, now=NOW)
    assert bridge == {
        "provider": "lmarena_bridge",
        "model": "gpt-5",
        "requests": 20,
        "errors": 0,
        "error_rate": 0.0,
        "latency_p50_ms": 100,
        "latency_p95_ms": 190,
        "ttfb_p50_ms": None,
        "prompt_tokens": 40,
        "completion_tokens": 30,
    }
    assert (yupp["provider"], yupp["requests"], yupp["errors"], yupp["error_rate"]) == ("yupp2api", 4, 2, 0.5)
    assert (yupp["latency_p50_ms"], yupp["latency_p95_ms"], yupp["ttfb_p50_ms"]) == (20, 40, 4)
    assert summary(conn, 60, now=NOW - 7200) == []
    with pytest.raises(ValueError):
        summary(conn, 0)


def test_sessions_sum_per_domain_and_name(conn):
    write(
        conn,
        req(ts=NOW - 30, domain="lmarena.ai", session_name="team", prompt_tokens=5, completion_tokens=7),
        req(ts=NOW - 20, domain="lmarena.ai", session_name="team", status=429, prompt_tokens=1),
        req(ts=NOW - 10, domain="canary.lmarena.ai", session_name="team", error_code="stream_broken"),
        req(ts=NOW - 5, domain="lmarena.ai", session_name="solo", kind="heartbeat"),  # not a request
        req(ts=NOW - 1),  # no session
    )
    script = {"last_capture": None, "script_errors_24h": 0, "last_script_error": None}
    assert sessions(conn, now=NOW) == [
        {
            "domain": "canary.lmarena.ai",
            "session_name": "team",
            "requests": 1,
            "errors": 1,
            "last_seen": NOW - 10,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            **script,
        },
        {
            "domain": "lmarena.ai",
            "session_name": "team",
            "requests": 2,
            "errors": 1,
            "last_seen": NOW - 20,
            "prompt_tokens": 6,
            "completion_tokens": 7,
            **script,
        },
    ]
    assert [s["domain"] for s in sessions(conn, since=NOW - 15)] == ["canary.lmarena.ai"]
    assert len(sessions(conn, limit=1)) == 1


def script(ts, kind, detail=None, name="team"):
    return {"ts": ts, "kind": kind, "domain": "lmarena.ai", "session_name": name, "status": 202, "detail": detail}


def test_sessions_show_what_the_userscript_reported(conn):
    write(
        conn,
        req(ts=NOW - 90_000, domain="lmarena.ai", session_name="team"),
        script(NOW - 100_000, "error", {"step": "register", "status": 500}),  # over a day ago: not counted
        script(NOW - 600, "capture", {"ids_source": "retry"}),
        script(NOW - 300, "capture", {"ids_source": "bridge_job"}),
        script(NOW - 200, "error", {"step": "register", "status": 401, "attempt": 1}),
        script(NOW - 100, "error", {"step": "register", "status": 403, "attempt": 2}),
        script(NOW - 50, "heartbeat"),  # neither a capture nor an error
        script(NOW - 40, "error", "plain text", name="fresh"),  # a session no request used yet
    )
    fresh, team = sessions(conn, now=NOW)
    assert team["last_capture"] == NOW - 300
    assert team["script_errors_24h"] == 2
    assert team["last_script_error"] == {"ts": NOW - 100, "detail": {"step": "register", "status": 403, "attempt": 2}}
    assert (team["requests"], team["last_seen"]) == (1, NOW - 90_000)
    assert fresh["session_name"] == "fresh"
    assert (fresh["requests"], fresh["errors"], fresh["last_seen"], fresh["last_capture"]) == (0, 0, None, None)
    assert fresh["script_errors_24h"] == 1 and fresh["last_script_error"] == {"ts": NOW - 40, "detail": "plain text"}
    assert [s["session_name"] for s in sessions(conn, since=NOW - 250, now=NOW)] == ["fresh", "team"]
    assert sessions(conn, since=NOW - 250, now=NOW)[1]["last_capture"] is None


def test_timeseries_fills_every_bucket(conn):
    # Window 60 s in 6 buckets of 10 s; NOW is a bucket edge, so NOW opens the last bucket.
    write(
        conn,
        req(ts=NOW - 50, latency_ms=100),  # bucket 0: [NOW-50, NOW-40)
        req(ts=NOW - 41, latency_ms=300, status=500),
        req(ts=NOW - 40.5, latency_ms=200),
        req(ts=NOW - 1, latency_ms=7),  # bucket 4: [NOW-10, NOW)
        req(ts=NOW, latency_ms=9),  # bucket 5, the current one: [NOW, NOW+10)
        req(ts=NOW - 51, latency_ms=1),  # before the window
    )
    series = timeseries(conn, 60, 6, now=NOW)
    assert [b["start"] for b in series] == [NOW - 50 + 10 * i for i in range(6)]
    assert [(b["requests"], b["errors"]) for b in series] == [(3, 1), (0, 0), (0, 0), (0, 0), (1, 0), (1, 0)]
    assert (series[0]["latency_p50_ms"], series[0]["latency_p95_ms"]) == (200, 300)
    assert series[1]["latency_p50_ms"] is None
    assert series[-1]["end"] == NOW + 10
    assert len(timeseries(conn, 60, 10**9, now=NOW)) == 1000  # capped


def test_counters_stay_monotonic_after_cleanup(path, recorder):
    for latency in (30, 80, 700, 1000, 400_000):
        recorder.record(req(ts=NOW - 100, latency_ms=latency, prompt_tokens=1))
    recorder.record(req(ts=NOW - 100, status=500))  # no latency: counted, not observed
    recorder.flush()
    before = metrics_snapshot(path)["counters"]
    ok = next(c for c in before if c["status"] == 200)
    assert (ok["count"], ok["latency_count"], ok["prompt_tokens"]) == (5, 5, 5)
    assert ok["latency_sum"] == pytest.approx(401.81)
    buckets = dict(ok["latency_buckets"])
    assert list(buckets) == [*BUCKETS, math.inf]
    # Cumulative like Prometheus: le=0.05 holds 30 ms; le=1 holds 30, 80, 700 and exactly 1000 ms.
    assert (buckets[0.05], buckets[0.1], buckets[0.5], buckets[1.0], buckets[300.0], buckets[math.inf]) == (
        1,
        2,
        2,
        4,
        4,
        5,
    )
    assert next(c for c in before if c["status"] == 500)["errors"] == 1

    assert cleanup(path, NOW) == 6
    assert summary(path, 3600, now=NOW) == []
    assert metrics_snapshot(path)["counters"] == before
    recorder.record(req(ts=NOW, latency_ms=30))
    recorder.flush()
    after = next(c for c in metrics_snapshot(path)["counters"] if c["status"] == 200)
    assert (after["count"], dict(after["latency_buckets"])[0.05]) == (6, 2)


def test_record_is_cheap_and_lands_after_flush(path, conn, recorder):
    event = req(latency_ms=12.5, stream=True, ttfb_ms=3)
    started = time.perf_counter()
    for _ in range(10_000):
        recorder.record(event)
    elapsed = time.perf_counter() - started
    # A sanity bound only (measured ~10 ms): a lock, I/O or a JSON encode per call would blow far past it.
    assert elapsed < 2.0
    recorder.flush()
    assert count_events(conn) == 10_000
    assert recorder.stats()["written"] == 10_000


def test_full_queue_drops_and_counts(path, conn):
    recorder = Recorder(path, flush_interval=60, max_queue=100)
    try:
        for i in range(150):
            recorder.record(req(request_id=str(i)))
        assert recorder.stats()["dropped"] == 50
        recorder.flush()
        assert count_events(conn) == 100
        assert metrics_snapshot(conn)["totals"] == {"dropped": 50, "failed": 0}
    finally:
        recorder.close()


def test_bad_events_never_raise(conn, recorder):
    recorder.record(object())  # not a mapping
    recorder.record(req(status="teapot", latency_ms="slow", prompt_tokens=10**30, model="\ud800x"))
    recorder.record({"kind": "fallback", "detail": {"from": "yupp2api", "note": "y" * 10_000}})
    recorder.flush()
    assert recorder.stats()["invalid"] == 1
    odd, custom = conn.execute("SELECT status, latency_ms, prompt_tokens, model, detail FROM events ORDER BY id")
    assert odd == (0, None, None, "?x", None)
    assert len(custom[4]) < 2100 and "truncated" in json.loads(custom[4])


# Readers beside the writer thread: opening and closing the file must not drop the writer's locks.
@pytest.mark.slow  # 4 worker processes
@pytest.mark.parametrize("read_every", [0, 10], ids=["writing", "writing-and-reading"])
def test_processes_writing_at_once_lose_nothing(tmp_path, path, read_every):
    workers, per_worker = 4, 500
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, path, str(w), str(per_worker), str(barrier), str(read_every)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    deadline = time.monotonic() + 30
    while len(list(barrier.glob("ready-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.005)
    (barrier / "go").touch()  # the file does not exist yet: every worker creates the schema at once
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers
    stats = [json.loads(out) for out in outputs]
    assert all(s["written"] == per_worker and s["dropped"] == s["failed"] == 0 for s in stats)

    events = [make_event(w, i) for w in range(workers) for i in range(per_worker)]
    conn = connect(path)
    try:
        assert conn.execute("SELECT COUNT(DISTINCT request_id), COUNT(*) FROM events").fetchone() == (2000, 2000)
        snapshot = metrics_snapshot(conn)
    finally:
        conn.close()
    for provider in ("p0", "p1"):
        mine = [e for e in events if e["provider"] == provider]
        rows = [c for c in snapshot["counters"] if c["provider"] == provider]
        assert sum(c["count"] for c in rows) == len(mine)
        assert sum(c["errors"] for c in rows) == sum(e["status"] == 500 for e in mine)
        assert sum(c["prompt_tokens"] for c in rows) == sum(e["prompt_tokens"] for e in mine)
        assert sum(c["latency_sum"] for c in rows) == pytest.approx(sum(e["latency_ms"] for e in mine) / 1000)
    assert snapshot["active_streams_total"] == 0  # each closed its recorder, which forgets its open stream
    assert snapshot["totals"] == {"dropped": 0, "failed": 0}


def test_writer_waits_out_a_locked_database(path, conn):
    recorder = Recorder(path, flush_interval=60, busy_timeout=0.05, retries=6)
    try:
        for i in range(10):
            recorder.record(req(request_id=str(i)))
        holder = connect(path)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.4, holder.execute, ("COMMIT",))
        release.start()
        try:
            recorder.flush()  # six jittered back-offs add up to at least 1.2 s, well past the 0.4 s hold
        finally:
            release.join()
            holder.close()
        assert recorder.stats()["retries"] >= 1
        assert (recorder.stats()["failed"], count_events(conn)) == (0, 10)
    finally:
        recorder.close()


def test_writer_gives_up_on_a_long_lock_and_carries_on(path, conn, caplog):
    recorder = Recorder(path, flush_interval=60, busy_timeout=0.01, retries=1)
    try:
        recorder.record(req(request_id="lost", model="secret-model"))
        conn.execute("BEGIN IMMEDIATE")
        try:
            recorder.flush()  # must not raise
        finally:
            conn.execute("COMMIT")
        assert recorder.stats()["failed"] == 1
        assert "1 events not written" in caplog.text and "secret-model" not in caplog.text
        recorder.record(req(request_id="kept"))
        recorder.flush()
        assert [r for (r,) in conn.execute("SELECT request_id FROM events")] == ["kept"]
        assert metrics_snapshot(conn)["totals"]["failed"] == 1
    finally:
        recorder.close()


def test_streams_of_dead_processes_are_ignored_and_cleaned(path, conn, recorder):
    gone = dead_pid()
    conn.executemany(
        "INSERT INTO active_streams (pid, stream_id, started_at, provider, model) VALUES (?, ?, ?, 'x', 'y')",
        [(gone, "a", NOW), (gone, "b", NOW), (os.getpid(), "left-by-an-earlier-process", NOW)],
    )
    recorder.stream_started("s1", "lmarena_bridge", "gpt-5")
    recorder.stream_started("s2", "yupp2api", "gpt-5")
    recorder.stream_ended("s2")
    recorder.flush()
    snapshot = metrics_snapshot(conn)
    # The dead pid's rows are ignored; this pid's stale row went with the recorder's first write.
    assert snapshot["active_streams"] == [{"provider": "lmarena_bridge", "model": "gpt-5", "count": 1}]
    assert cleanup(conn, 0) == 2
    assert conn.execute("SELECT pid, stream_id FROM active_streams").fetchall() == [(os.getpid(), "s1")]
    recorder.close()
    assert metrics_snapshot(conn)["active_streams_total"] == 0


def test_record_after_close_is_ignored(path, conn):
    recorder = Recorder(path, flush_interval=60)
    recorder.record(req())
    recorder.close()
    recorder.record(req())
    recorder.flush()
    assert count_events(conn) == 1


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs os.fork on Linux")
def test_forked_child_starts_its_own_writer(path, conn):
    recorder = Recorder(path, flush_interval=60)
    try:
        for i in range(5):
            recorder.record(req(request_id=f"parent-{i}"))
        recorder.flush()  # the parent now holds an open connection, which must not reach the child
        for i in range(5, 10):
            recorder.record(req(request_id=f"parent-{i}"))  # queued, not written, when the fork happens
        parent_thread = recorder._thread
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+ warns about forking with threads
            pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                if recorder._conn is not None:
                    os._exit(3)  # the at-fork hook should have closed it in the parent first
                for i in range(100):
                    recorder.record(req(request_id=f"child-{i}"))
                recorder.stream_started("child-stream", "p", "m")
                recorder.flush()
                alive = recorder._thread is not None and recorder._thread.is_alive()
                code = 0 if alive and recorder.stats()["written"] == 100 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for i in range(10, 15):
            recorder.record(req(request_id=f"parent-{i}"))
        recorder.flush()
        assert recorder._thread is parent_thread and parent_thread.is_alive()
        assert count_events(conn, "request_id LIKE 'child-%'") == 100
        assert count_events(conn, "request_id LIKE 'parent-%'") == 15  # the child did not write the parent's
        assert count_events(conn) == 115
        assert conn.execute("SELECT stream_id FROM active_streams").fetchall() == [("child-stream",)]
        assert metrics_snapshot(conn)["active_streams_total"] == 0  # the child exited
    finally:
        recorder.close()


def test_summary_stays_fast_on_100k_events(conn):
    rows = [
        (NOW - 86400 + i * 0.864, "request", "p", f"m{i % 10}", 200 if i % 20 else 500, float(i % 1000), 100)
        for i in range(100_000)
    ]
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (ts, kind, provider, model, status, latency_ms, prompt_tokens) VALUES (?,?,?,?,?,?,?)",
            rows,
        )
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM events WHERE ts >= ? AND ts <= ? AND kind = 'request'", (0, 1)
    ).fetchall()
    assert "events_ts" in str(plan)
    started = time.perf_counter()
    result = summary(conn, 86400, now=NOW)
    elapsed = time.perf_counter() - started
    m0 = [row for row in rows if row[3] == "m0"]
    assert len(result) == 10 and sum(r["requests"] for r in result) == 100_000
    assert result[0]["model"] == "m0" and result[0]["errors"] == sum(row[4] == 500 for row in m0) == 5000
    assert result[0]["latency_p95_ms"] == percentile(sorted(row[5] for row in m0), 95) == 940
    assert elapsed < 5.0  # a sanity bound (measured ~0.15 s); a scan per group or per row would be far slower
    series = timeseries(conn, 3600, 60, now=NOW)
    assert sum(b["requests"] for b in series) == sum(series[0]["start"] <= row[0] < NOW + 60 for row in rows)


def test_queries_report_an_unusable_database(tmp_path):
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not sqlite" * 100)
    os.chmod(bad, 0o600)
    with pytest.raises(AnalyticsError, match="cannot be used"):
        summary(str(bad), 60)
