"""Requests in flight per client key: one count every process shares, freed when answers end, lapsing with a process."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest
import requests

from app.config import ConfigError
from app.inflight import InFlight
from app.store.inflight_leases import RedisSlots, SQLiteSlots
from tests.conftest import CLIENT_KEY
from tests.helpers.gateway_process import run_gateway
from tests.helpers.redis_server import RedisServer
from tests.upstreams.fake_bridge import FakeBridge
from tests.upstreams.httpserver import wait_until

HI = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
# 200 chunks of " tick", one every chunk_delay: a stream that stays open while the test looks.
SLOW = {"model": "gpt-5", "stream": True, "messages": [{"role": "user", "content": "[[fake:slow]]"}]}
WORKER = str(Path(__file__).parent / "helpers" / "inflight_worker.py")


@pytest.fixture(params=["sqlite", "redis"])
def make_slots(request, tmp_path):
    """Return a factory of connections to one shared store: each call is what another process would open."""
    opened = []
    if request.param == "sqlite":
        path = str(tmp_path / "inflight.sqlite3")

        def factory():
            opened.append(SQLiteSlots(path))
            return opened[-1]
    else:
        url, prefix = request.getfixturevalue("redis_server").url, f"t-{uuid.uuid4().hex[:8]}:"

        def factory():
            opened.append(RedisSlots(url, prefix=prefix))
            return opened[-1]

    yield factory
    for slots in opened:
        slots.close()


def chat_calls(bridge) -> int:
    return len([r for r in bridge.requests if r.path == "/v1/chat/completions"])


def test_a_key_has_its_limit_and_keys_are_counted_apart(make_slots):
    limiter = InFlight(2, make_slots())
    first, second = limiter.acquire("k"), limiter.acquire("k")
    assert first is not None and second is not None
    assert limiter.acquire("k") is None
    assert limiter.acquire("other") is not None
    first.release()
    first.release()  # twice gives back one slot, not two
    assert limiter.acquire("k") is not None
    assert limiter.acquire("k") is None


def test_processes_share_one_count(make_slots):
    one, other = InFlight(3, make_slots()), InFlight(3, make_slots())
    held = [one.acquire("k"), one.acquire("k"), other.acquire("k")]
    assert None not in held
    assert one.acquire("k") is None and other.acquire("k") is None
    held[0].release()  # given back by one process, taken by the other
    assert other.acquire("k") is not None


@pytest.mark.slow  # waits several lease lifetimes
def test_a_held_lease_is_renewed_and_a_forgotten_one_lapses(make_slots):
    holder, other = InFlight(1, make_slots(), lease_seconds=0.3), InFlight(1, make_slots(), lease_seconds=0.3)
    lease = holder.acquire("k")
    assert lease is not None
    time.sleep(1.2)  # four lease lifetimes: only renewals keep it counted
    assert other.acquire("k") is None
    del lease  # a request that lost its lease unreleased (its response dropped unsent)
    gc.collect()
    assert wait_until(lambda: other.acquire("k") is not None, 5)
    holder.close()


@pytest.mark.slow  # a worker process, and waits on lease lifetimes
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_the_leases_of_a_killed_process_lapse(request, tmp_path, store):
    if store == "sqlite":
        where = str(tmp_path / "inflight.sqlite3")
        slots = SQLiteSlots(where)
    else:
        where = request.getfixturevalue("redis_server").url
        slots = RedisSlots(where, prefix="inflight-test:")
    key, ready = f"key:{uuid.uuid4().hex}", tmp_path / "ready"
    worker = subprocess.Popen([sys.executable, WORKER, where, key, "2", "0.5", str(ready)])
    try:
        assert wait_until(ready.exists, 30)
        limiter = InFlight(2, slots, lease_seconds=0.5)
        time.sleep(1.5)  # three lease lifetimes: the worker's renewals keep both its leases
        assert limiter.acquire(key) is None
        worker.kill()  # SIGKILL: no clean-up runs, nothing is given back
        worker.wait(timeout=10)
        assert wait_until(lambda: limiter.acquire(key) is not None, 5)
        assert limiter.acquire(key) is not None  # both of the dead process's slots came back
        assert limiter.acquire(key) is None
    finally:
        worker.kill()
        worker.wait(timeout=10)
        slots.close()


def test_a_stream_holds_its_slot_until_it_ends_or_its_client_leaves(make_app, auth, bridge):
    client = make_app(GATEWAY_MAX_IN_FLIGHT_PER_KEY=1).test_client()
    stream = client.post("/v1/chat/completions", json=SLOW, headers=auth)
    assert stream.status_code == 200  # answered, its body not read yet: still in flight
    refused = client.post("/v1/chat/completions", json=HI, headers=auth)
    assert refused.status_code == 429
    assert refused.get_json() == {
        "error": {
            "message": refused.get_json()["error"]["message"],
            "type": "rate_limit_error",
            "param": None,
            "code": "too_many_in_flight",
        }
    }
    assert "at most 1 at once for this API key" in refused.get_json()["error"]["message"]
    assert refused.headers["Retry-After"] == "1"
    assert chat_calls(bridge) == 1  # the refused request never reached the upstream
    stream.close()  # the client leaves
    quick = client.post("/v1/chat/completions", json={**HI, "stream": True}, headers=auth)
    assert quick.status_code == 200
    assert quick.get_data().endswith(b"data: [DONE]\n\n")  # read to its end: the stream is over
    assert client.post("/v1/chat/completions", json=HI, headers=auth).status_code == 200


def test_answers_and_refusals_give_their_slot_back(make_app, auth, bridge):
    client = make_app(GATEWAY_MAX_IN_FLIGHT_PER_KEY=1).test_client()
    statuses = [client.post("/v1/chat/completions", json=HI, headers=auth).status_code for _ in range(3)]
    statuses.append(client.post("/v1/chat/completions", json={"model": 5}, headers=auth).status_code)
    statuses.append(client.get("/v1/models/no-such-model", headers=auth).status_code)
    bridge.no_browser = True
    statuses.append(client.post("/v1/chat/completions", json=HI, headers=auth).status_code)
    statuses.append(client.post("/v1/chat/completions", json={**HI, "stream": True}, headers=auth).status_code)
    bridge.no_browser = False
    statuses.append(client.get("/v1/models", headers=auth).status_code)
    assert statuses == [200, 200, 200, 400, 404, 503, 503, 200]


def test_wrong_keys_take_no_slot(make_app, auth, bridge):
    client = make_app(GATEWAY_MAX_IN_FLIGHT_PER_KEY=1).test_client()
    stream = client.post("/v1/chat/completions", json=SLOW, headers={"Authorization": "Bearer sk-wrong"})
    assert stream.status_code == 401
    assert client.post("/v1/chat/completions", json=HI, headers=auth).status_code == 200


def test_an_open_gateway_counts_by_client_address(make_app, bridge):
    client = make_app(GATEWAY_API_KEYS="", GATEWAY_MAX_IN_FLIGHT_PER_KEY=1).test_client()
    held = client.post("/v1/chat/completions", json=SLOW, environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert held.status_code == 200
    refused = client.post("/v1/chat/completions", json=HI, environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert refused.status_code == 429
    assert "for this client address" in refused.get_json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=HI, environ_base={"REMOTE_ADDR": "127.0.0.3"}).status_code == 200
    held.close()


def test_zero_turns_the_limit_off(make_app, auth, bridge):
    app = make_app(GATEWAY_MAX_IN_FLIGHT_PER_KEY=0)
    assert app.extensions["inflight"] is None
    client = app.test_client()
    held = [client.post("/v1/chat/completions", json=SLOW, headers=auth) for _ in range(3)]
    assert [r.status_code for r in held] == [200] * 3
    for response in held:
        response.close()


def test_keys_are_not_stored_in_the_file(make_app, auth, bridge):
    app = make_app()
    held = app.test_client().post("/v1/chat/completions", json=SLOW, headers=auth)
    stored = (Path(app.config["STORAGE_PATH"]).parent / "inflight.sqlite3").read_bytes()
    held.close()
    assert CLIENT_KEY.encode() not in stored


def test_a_broken_file_lets_requests_through_and_says_so(make_app, auth, bridge, caplog):
    app = make_app(GATEWAY_MAX_IN_FLIGHT_PER_KEY=1)
    path = Path(app.config["STORAGE_PATH"]).parent / "inflight.sqlite3"
    app.extensions["inflight"].slots.close()
    path.write_bytes(b"this is not a database" * 100)
    client = app.test_client()
    held = client.post("/v1/chat/completions", json=SLOW, headers=auth)
    assert [client.get("/v1/models", headers=auth).status_code for _ in range(3)] == [200] * 3
    held.close()
    assert caplog.text.count("in-flight state unavailable") == 1  # once, not once a request


def test_an_unusable_file_fails_at_start_up(make_app, tmp_path):
    storage = tmp_path / "elsewhere"
    (storage / "inflight.sqlite3").mkdir(parents=True)  # a folder where the file belongs
    with pytest.raises(ConfigError, match="GATEWAY_MAX_IN_FLIGHT_PER_KEY: the file .* cannot be used"):
        make_app(STORAGE_PATH=str(storage / "sessions.json"))


@pytest.mark.slow  # its own redis-server
def test_in_redis_mode_every_process_shares_the_count(serve, auth, tmp_path):
    server = RedisServer(tmp_path)
    (tmp_path / "storage").mkdir()  # the secrets generated once still live there
    try:
        redis = {"SESSION_STORE": "redis", "REDIS_URL": server.url, "GATEWAY_MAX_IN_FLIGHT_PER_KEY": 1}
        one, other = serve(**redis), serve(**redis)  # two apps, as two processes would be
        held = requests.post(f"{one.url}/v1/chat/completions", json=SLOW, headers=auth, stream=True, timeout=10)
        assert held.status_code == 200
        refused = requests.post(f"{other.url}/v1/chat/completions", json=HI, headers=auth, timeout=10)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_in_flight"
        held.close()  # the client leaves: the first app notices at its next write and frees the slot
        assert wait_until(
            lambda: requests.post(f"{other.url}/v1/chat/completions", json=HI, headers=auth, timeout=10).ok, 5
        )
    finally:
        server.stop()


class OpenStream:
    """A slow stream read up to its first content, so it is surely being answered; open until close()."""

    def __init__(self, url: str, key: str) -> None:
        self.response = requests.post(
            f"{url}/v1/chat/completions", json=SLOW, headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=10
        )
        assert self.response.status_code == 200
        # Kept: a line iterator dropped half-read makes urllib3 close the connection, which ends the stream.
        self.lines = self.response.iter_lines()
        assert any(b"tick" in line for line in self.lines)

    def close(self) -> None:
        self.response.close()


@pytest.mark.slow  # a gateway process and nine streams
def test_one_key_cannot_take_every_thread_of_python_m_app():
    # python -m app as `make run` starts it: 16 waitress threads, GATEWAY_MAX_IN_FLIGHT_PER_KEY at its default of 8.
    bridge = FakeBridge(api_key="sk-lmab-test", chunk_delay=0.05, response_delay=0.01)
    bridge.start()
    streams: list[OpenStream] = []
    try:
        with run_gateway(bridge.url, GATEWAY_API_KEYS="sk-one,sk-two", GATEWAY_THREADS="16") as gateway:
            streams = [OpenStream(gateway.url, "sk-one") for _ in range(8)]
            one = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-one", max_retries=0, timeout=10)
            two = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-two", max_retries=0, timeout=10)
            with pytest.raises(openai.RateLimitError) as refused:
                one.chat.completions.create(**SLOW)
            assert refused.value.code == "too_many_in_flight"
            answer = two.chat.completions.create(**HI)
            assert answer.choices[0].message.content == "Hello from the real bridge"
            assert requests.get(f"{gateway.url}/health", timeout=5).status_code == 200
            streams.pop().close()  # one client leaves: its slot comes back
            assert wait_until(lambda: _passes(one), 5)
            one.close()
            two.close()
    finally:
        for stream in streams:
            stream.close()
        bridge.stop()


def _passes(client: openai.OpenAI) -> bool:
    try:
        client.chat.completions.create(**HI)
    except openai.RateLimitError:
        return False
    return True
