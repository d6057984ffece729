"""Fleet analytics in a real redis-server: the same answers as the SQLite file, shared by instances, outages."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import socket
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.analytics import FleetAnalytics, LocalSource, Recorder, fleet
from app.analytics.fleet_queries import cover
from app.errors import AnalyticsError
from tests.conftest import ADMIN_KEY, MESSAGE_ID, SESSION_ID
from tests.helpers.redis_server import RedisServer

HI = [{"role": "user", "content": "Say hello"}]
RETENTION_DAYS = 30.0


@pytest.fixture
def recorders(tmp_path, redis_db):
    """Return a factory of recorders writing to their own SQLite file and the shared Redis; closed afterwards."""
    made: list[Recorder] = []

    def factory(url: str = redis_db[0], retention: float = RETENTION_DAYS) -> Recorder:
        path = str(tmp_path / f"instance-{len(made)}" / "analytics.sqlite3")
        made.append(Recorder(path, flush_interval=60, fleet=FleetAnalytics(url, retention, timeout=2)))
        return made[-1]

    yield factory
    for recorder in made:
        recorder.close()


def varied_events(now: float, count: int = 400) -> list[dict]:
    """Return requests spread over the two days before now: two providers, errors, streams, sessions, tokens."""
    rng = random.Random(7)
    events = []
    for i in range(count):
        stream = rng.random() < 0.4
        status = rng.choice([200] * 8 + [429, 503])
        events.append(
            {
                "ts": now - rng.uniform(0, 2 * 86400) if i % 4 else now - rng.uniform(0, 3000),
                "provider": rng.choice(["lmarena_bridge", "yupp2api"]),
                "model": rng.choice(["gpt-5", "Claude Sonnet 4\n☀️ | 🆕"]),
                "status": status,
                "stream": stream,
                "latency_ms": rng.lognormvariate(6, 1.2),
                "ttfb_ms": rng.lognormvariate(5, 1) if stream else None,
                "error_code": "upstream_stream_broken" if stream and rng.random() < 0.1 else None,
                "prompt_tokens": rng.randint(1, 500),
                "completion_tokens": rng.randint(0, 900) if status == 200 else None,
                "domain": "lmarena.ai" if i % 3 else None,
                "session_name": f"team-{i % 5}" if i % 3 else None,
            }
        )
    # What the sessions' scripts report: captures and errors, a few of them for sessions no request used. Errors
    # stay clear of the 24-hour edge, which the fleet counts to the hour.
    for i in range(60):
        kind = "capture" if i % 3 else "error"
        ago = rng.uniform(0, 20 * 3600) if i % 2 else rng.uniform(26 * 3600, 2 * 86400)
        detail = {"step": "register", "status": 401 + i} if kind == "error" else {"ids": i}
        events.append({"ts": now - ago, "kind": kind, "domain": "lmarena.ai", "session_name": f"team-{i % 7}",
                       "detail": detail, "status": 202})  # fmt: skip
    return events


def requests_total(client) -> dict[tuple[str, str, str], float]:
    """Return gateway_requests_total of an instance's /metrics, by provider, model and status."""
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (s.labels["provider"], s.labels["model"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gateway_requests_total"
    }


def within_a_bucket(fleet_ms: float | None, exact_ms: float | None) -> bool:
    """Return whether a percentile read from the histogram is within half a bucket (2^(1/8)) of the exact one."""
    if fleet_ms is None or exact_ms is None:
        return fleet_ms is exact_ms
    return abs(math.log2(fleet_ms / exact_ms)) <= 1 / 8 + 1e-9


def test_fleet_answers_match_the_sqlite_file(recorders):
    recorder = recorders()
    # The fleet counts whole minutes: asked at a minute's start, both count the same events.
    now = time.time() // 60 * 60
    for event in varied_events(now):
        recorder.record(event)
    recorder.flush()
    local, shared = LocalSource(recorder.path), recorder.fleet
    with local:
        for window in (3600, 6 * 3600, 86400, 7 * 86400):
            exact, read = local.summary(window, now=now), shared.summary(window, now=now)
            assert [(r["provider"], r["model"]) for r in read] == [(r["provider"], r["model"]) for r in exact]
            for a, b in zip(read, exact, strict=True):
                figures = ("requests", "errors", "error_rate", "prompt_tokens", "completion_tokens")
                assert {k: a[k] for k in figures} == {k: b[k] for k in figures}
                for key in ("latency_p50_ms", "latency_p95_ms", "ttfb_p50_ms"):
                    assert within_a_bucket(a[key], b[key]), (key, a[key], b[key])
        for window, buckets in ((3600, 60), (6 * 3600, 120), (86400, 96), (7 * 86400, 84)):
            exact, read = local.timeseries(window, buckets, now=now), shared.timeseries(window, buckets, now=now)
            assert [(b["start"], b["requests"], b["errors"]) for b in read] == [
                (b["start"], b["requests"], b["errors"]) for b in exact
            ]
            assert sum(b["requests"] for b in read) > 0
            for a, b in zip(read, exact, strict=True):
                assert within_a_bucket(a["latency_p95_ms"], b["latency_p95_ms"])
        exact, read = local.sessions(now=now), shared.sessions(now=now)
        assert read == exact
        assert len(read) == 7 and [r for r in read if r["requests"] == 0]  # two only their scripts reported on
        assert sum(r["script_errors_24h"] for r in read) > 0 and all(r["last_capture"] for r in read)


def test_two_instances_each_show_the_whole_fleet(serve, openai_for, redis_db, tmp_path, admin, bridge):
    common = {
        "SESSION_STORE": "redis",
        "REDIS_URL": redis_db[0],
        "GATEWAY_USERSCRIPT_SECRET": "shared-userscript-secret",
        "GATEWAY_DASHBOARD_SECRET": "shared-dashboard-secret",
    }
    one, two = (
        serve(
            **common,
            STORAGE_PATH=str(tmp_path / name / "sessions.json"),
            GATEWAY_ANALYTICS_PATH=str(tmp_path / name / "analytics.sqlite3"),
        )
        for name in ("one", "two")
    )
    registered = one.app.test_client().post(
        "/session/register",
        headers=admin,
        json={"domain": "lmarena.ai", "session_name": "team-a", "session_id": SESSION_ID, "message_id": MESSAGE_ID},
    )
    assert registered.status_code == 201, registered.get_data(as_text=True)
    client = openai_for(one)
    for _ in range(3):
        client.chat.completions.create(model="gpt-5", messages=HI)
    list(
        client.chat.completions.create(
            model="gpt-5", messages=HI, stream=True, extra_headers={"X-Session-Name": "team-a"}
        )
    )
    captured = {"domain": "lmarena.ai", "session_name": "team-a", "kind": "capture", "detail": {"step": "ids"}}
    assert one.app.test_client().post("/analytics/event", json=captured, headers=admin).status_code == 202
    one.app.extensions["analytics"].flush()  # what its writer thread does within half a second
    other = two.app.test_client()
    data = other.get("/analytics/summary?window=1h", headers=admin).get_json()["data"]
    row = next(r for r in data if r["model"] == "gpt-5")
    assert (row["requests"], row["errors"]) == (4, 0) and row["ttfb_p50_ms"] > 0
    sessions = other.get("/analytics/sessions", headers=admin).get_json()["data"]
    assert [(s["session_name"], s["requests"]) for s in sessions] == [("team-a", 1)]
    assert sessions[0]["last_capture"] > sessions[0]["last_seen"]  # the script's report, sent after the chats
    page = other.get("/dashboard", headers=admin).get_data(as_text=True)
    assert re.search(r'id="total-requests">4<', page)
    # /metrics stays each instance's own: the second served nothing.
    assert requests_total(other) == {}
    assert requests_total(one.app.test_client()) == {("lmarena_bridge", "gpt-5", "200"): 4}


def test_buckets_expire_after_the_retention_and_sessions_when_idle(recorders, redis_db):
    recorder = recorders()
    now = time.time()
    recorder.record({"ts": now, "provider": "p", "model": "m", "status": 200, "latency_ms": 5,
                     "domain": "lmarena.ai", "session_name": "a"})  # fmt: skip
    recorder.flush()
    client, retention = redis_db[1], RETENTION_DAYS * 86400
    for width, letter in fleet.RESOLUTIONS.items():
        start = int(now // width * width)
        for key in (f"lmgw:an:{letter}:{start}", f"lmgw:an:{letter}t:{start}"):
            assert start + width + retention - now - 2 <= client.ttl(key) <= start + width + retention - now + 1
    assert retention < client.ttl('lmgw:an:s:["lmarena.ai","a"]') <= retention + 86400 + 1
    assert client.zscore("lmgw:an:sessions", '["lmarena.ai","a"]') == pytest.approx(now)


def test_cleanup_removes_session_days_past_the_retention(recorders, redis_db):
    recorder = recorders(retention=1)
    now = time.time()
    for ts, name in ((now - 3 * 86400, "old"), (now - 3 * 86400, "both"), (now, "both")):
        recorder.record({"ts": ts, "provider": "p", "model": "m", "status": 200, "domain": "lmarena.ai",
                         "session_name": name})  # fmt: skip
    recorder.flush()
    shared = recorder.fleet
    assert [(s["session_name"], s["requests"]) for s in shared.sessions()] == [("both", 1)]
    # "old" leaves the index and the latest requests; its day and "both"'s old day go.
    assert shared.cleanup(now - 86400) == 4
    assert redis_db[1].zrange("lmgw:an:sessions", 0, -1) == ['["lmarena.ai","both"]']
    assert not redis_db[1].exists('lmgw:an:s:["lmarena.ai","old"]')
    assert [(s["session_name"], s["requests"]) for s in shared.sessions()] == [("both", 1)]


def test_open_streams_are_summed_over_processes(recorders):
    first, second = recorders(), recorders()
    first.stream_started("a", "p", "m")
    first.stream_started("b", "p", "m")
    second.stream_started("c", "p", "m")
    first.flush()
    second.flush()
    assert second.fleet.active_streams() == 3
    first.stream_ended("a")
    first.flush()
    assert second.fleet.active_streams() == 2
    first.close()  # a process that stops takes its streams out at once
    assert second.fleet.active_streams() == 1


@pytest.fixture
def outage_redis(tmp_path):
    """A redis-server of this test's own, durable, that the test stops and starts again."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", durable=True)
    yield server
    server.stop()


def test_events_recorded_while_redis_is_down_arrive_when_it_returns(recorders, outage_redis, caplog):
    recorder = recorders(outage_redis.url)
    event = {"provider": "p", "model": "m", "status": 200, "latency_ms": 20, "domain": "lmarena.ai",
             "session_name": "a"}  # fmt: skip
    for _ in range(5):
        recorder.record({**event, "ts": time.time()})
    recorder.flush()
    outage_redis.stop()
    for _ in range(7):
        recorder.record({**event, "ts": time.time()})
    # A script's error too: its latest-error script must be loaded again into the restarted Redis.
    recorder.record({"ts": time.time(), "kind": "error", "domain": "lmarena.ai", "session_name": "a",
                     "detail": {"step": "register"}, "status": 202})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="app.analytics.fleet"):
        recorder.flush()  # never raises: the increments are kept
    assert "fleet analytics: Redis unavailable (ConnectionError)" in caplog.text
    with pytest.raises(AnalyticsError, match="Redis is unavailable for fleet analytics"):
        recorder.fleet.summary(3600)
    with LocalSource(recorder.path) as local:  # this machine's file never missed one
        assert local.summary(3600)[0]["requests"] == 12
    outage_redis.start()
    recorder.flush()
    [row] = recorder.fleet.summary(3600)
    assert row["requests"] == 12 and row["latency_p50_ms"] == pytest.approx(20, rel=0.1)
    [session] = recorder.fleet.sessions()
    assert (session["requests"], session["script_errors_24h"]) == (12, 1)
    assert session["last_script_error"]["detail"] == {"step": "register"}


def test_what_waits_for_redis_is_capped_and_counted(recorders, outage_redis, monkeypatch):
    monkeypatch.setattr(fleet, "MAX_PENDING_FIELDS", 40)
    recorder = recorders(outage_redis.url)
    outage_redis.stop()
    for minute in range(30):  # each minute is new fields in six hashes, more than 40 in all
        recorder.record({"ts": time.time() - minute * 60, "provider": "p", "model": "m", "status": 200})
    recorder.flush()
    assert recorder.fleet.dropped > 0
    outage_redis.start()
    recorder.flush()
    requests = sum(b["requests"] for b in recorder.fleet.timeseries(3600, 60))
    assert 0 < requests < 30  # what was kept arrived; the rest was counted as dropped, not silently lost


def test_cover_uses_the_widest_aligned_buckets():
    day = 20_000 * 86400
    parts = cover(day - 120, day + 86400 + 3600 + 60)
    assert parts == [(60, day - 120), (60, day - 60), (86400, day), (3600, day + 86400), (60, day + 86400 + 3600)]
    assert cover(day, day) == []


def test_redis_keys_never_hold_a_prompt(recorders, redis_db):
    recorder = recorders()
    recorder.record({"ts": time.time(), "provider": "p", "model": "m", "status": 200, "detail": {"prompt": "secret"}})
    recorder.record({"ts": time.time(), "kind": "capture", "domain": "lmarena.ai", "session_name": "a",
                     "detail": {"prompt": "secret"}})  # fmt: skip
    recorder.flush()
    client = redis_db[1]
    dump = json.dumps({key: client.hgetall(key) for key in client.keys("lmgw:an:*") if client.type(key) == "hash"})
    assert "secret" not in dump
    # A userscript's event is counted per kind for its session, ready for the sessions table.
    [field] = client.hkeys('lmgw:an:s:["lmarena.ai","a"]')
    assert field.endswith(":k:capture")


def test_dashboard_says_when_fleet_analytics_cannot_be_read(make_app, outage_redis):
    app = make_app(
        SESSION_STORE="redis",
        REDIS_URL=outage_redis.url,
        GATEWAY_USERSCRIPT_SECRET="shared-userscript-secret",
        GATEWAY_DASHBOARD_SECRET="shared-dashboard-secret",
    )
    outage_redis.stop()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    answer = client.get("/analytics/summary", headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["error"]["code"] == "analytics_unavailable"
    page = client.get("/dashboard", headers=headers)
    assert page.status_code == 200
    assert "Redis is unavailable for fleet analytics" in page.get_data(as_text=True)


def test_cron_cleanup_prunes_the_fleet_figures_too(make_app, redis_db, tmp_path):
    (tmp_path / "storage").mkdir()
    app = make_app(SESSION_STORE="redis", REDIS_URL=redis_db[0], GATEWAY_CRON_TOKEN="tok",
                   GATEWAY_ANALYTICS_RETENTION_DAYS=1)  # fmt: skip
    recorder = app.extensions["analytics"]
    old = {"ts": time.time() - 3 * 86400, "provider": "p", "model": "m", "status": 200, "domain": "lmarena.ai",
           "session_name": "gone"}  # fmt: skip
    recorder.record(old)
    recorder.record({**old, "ts": time.time(), "session_name": "kept"})
    client = app.test_client()
    dry = client.post("/cron/cleanup?dry_run=1", headers={"X-Cron-Token": "tok"}).get_json()["analytics"]
    assert dry["fleet_records_removed"] == 0 and redis_db[1].zcard("lmgw:an:sessions") == 2
    done = client.post("/cron/cleanup", headers={"X-Cron-Token": "tok"}).get_json()["analytics"]
    # Its entries in the index and the latest requests, and its day.
    assert (done["events_removed"], done["fleet_records_removed"]) == (1, 3)
    assert redis_db[1].zrange("lmgw:an:sessions", 0, -1) == ['["lmarena.ai","kept"]']


class AnswerLosingProxy:
    """A TCP relay to Redis on loopback that, when armed, passes a request on but loses Redis's answer and hangs up:
    the client cannot know whether Redis applied it (the connection dropped while EXEC was on its way back)."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"
        self.armed = threading.Event()
        self.lost = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.target, timeout=10)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self.armed.is_set():
                    self.armed.clear()
                    self.lost.set()
                    break  # the answer goes nowhere
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_push_whose_answer_was_lost_is_counted_once(recorders, redis_server, redis_db):
    proxy = AnswerLosingProxy(redis_server.port)
    try:
        recorder = recorders(proxy.url.replace("/0", "/" + redis_db[0].rsplit("/", 1)[1]))
        event = {"provider": "p", "model": "m", "status": 200, "latency_ms": 5}
        recorder.record({**event, "ts": time.time()})
        recorder.flush()  # connected, and one push through
        proxy.armed.set()
        for _ in range(3):
            recorder.record({**event, "ts": time.time()})
        recorder.flush()  # Redis applies the push; its answer is lost
        assert proxy.lost.is_set() and recorder.fleet.due()
        # Redis applied it (reading sends nothing); the recorder cannot know that yet.
        assert [row["requests"] for row in recorder.fleet.summary(3600)] == [4]
        recorder.record({**event, "ts": time.time()})
        recorder.flush()  # asks Redis whether the lost one was applied, then sends only the new event
        assert not recorder.fleet.due()
        assert [row["requests"] for row in recorder.fleet.summary(3600)] == [5]
    finally:
        proxy.close()


def test_a_push_that_never_reached_redis_is_sent_again(recorders, outage_redis):
    recorder = recorders(outage_redis.url)
    event = {"provider": "p", "model": "m", "status": 200, "latency_ms": 5}
    recorder.record({**event, "ts": time.time()})
    recorder.flush()
    outage_redis.stop()
    recorder.record({**event, "ts": time.time()})
    recorder.flush()  # refused: not applied, and the next push cannot know that before Redis is back
    recorder.record({**event, "ts": time.time()})
    recorder.flush()
    outage_redis.start()
    recorder.flush()
    assert [row["requests"] for row in recorder.fleet.summary(3600)] == [3]
