"""The circuit breaker: opens after consecutive failures, probes after the cool-down, shared by all processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from app.errors import UpstreamError
from app.providers.breaker import Breaker
from app.store.breaker_state import FileState, RedisState
from tests.helpers.redis_server import RedisServer
from tests.upstreams.httpserver import wait_until
from tests.upstreams.script import Delay, Status

HI = [{"role": "user", "content": "hi"}]
CLAUDE = "Claude Sonnet 4\n☀️ | 🆕"
ROOT = Path(__file__).resolve().parent.parent


def chats(fake) -> list:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


@pytest.fixture
def settings(with_yupp):
    # One try per request, so each failing request is one breaker failure.
    return {
        **with_yupp,
        "YUPP2API_MAX_RETRIES": 0,
        "GATEWAY_BREAKER_FAILURES": 3,
        "GATEWAY_BREAKER_COOLDOWN_SECONDS": 1,
    }


def _fail(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=CLAUDE, messages=HI, extra_headers={"X-Provider": "yupp2api"})
    return caught.value


def _status(app_client, admin, name="yupp2api"):
    data = app_client.get("/providers/status", headers=admin).get_json()["data"]
    return next(p for p in data if p["name"] == name)


def _open(client, yupp, *steps) -> None:
    """Fail three requests (GATEWAY_BREAKER_FAILURES) to open yupp2Api's circuit; steps follow the three 503s."""
    yupp.script(*[Status(503)] * 3, *steps)
    for _ in range(3):
        assert _fail(client).status_code == 503


def test_open_circuit_is_probed_by_a_request_nothing_else_serves(serve, settings, openai_for, yupp, admin):
    server = serve(**{**settings, "GATEWAY_BREAKER_COOLDOWN_SECONDS": 60})
    client = openai_for(server)
    _open(client, yupp, Status(500))
    circuit = _status(server.app.test_client(), admin)["circuit"]
    assert circuit["state"] == "open" and circuit["consecutive_failures"] == 3
    # Long before the cool-down ends, a request that only yupp2Api can serve probes it instead of being refused:
    # this probe fails, and the circuit opens again at once, with a new cool-down.
    assert _fail(client).body["code"] == "upstream_error"
    reopened = _status(server.app.test_client(), admin)["circuit"]
    assert reopened["state"] == "open" and reopened["consecutive_failures"] == 4
    assert reopened["retry_at"] > circuit["retry_at"]
    # The next probe finds it answering again: closed.
    assert client.chat.completions.create(model=CLAUDE, messages=HI).choices[0].message.content
    assert len(chats(yupp)) == 5
    closed = _status(server.app.test_client(), admin)["circuit"]
    assert closed["state"] == "closed" and closed["consecutive_failures"] == 0 and closed["last_success_at"]


@pytest.mark.slow  # a probe that takes 0.8 s
def test_while_a_probe_is_under_way_other_requests_are_refused(serve, settings, openai_for, yupp, admin):
    server = serve(**{**settings, "GATEWAY_BREAKER_COOLDOWN_SECONDS": 60})
    client = openai_for(server)
    _open(client, yupp, Delay(0.8))  # the probe's answer takes a while
    with ThreadPoolExecutor(1) as pool:
        probe = pool.submit(client.chat.completions.create, model=CLAUDE, messages=HI)
        assert wait_until(lambda: len(chats(yupp)) == 4, 5)
        refused = _fail(client)  # the probe holds the circuit's one slot: no second request reaches yupp2Api
        assert refused.status_code == 503 and refused.body["code"] == "circuit_open"
        assert int(refused.response.headers["Retry-After"]) >= 1
        assert len(chats(yupp)) == 4
        assert probe.result(timeout=10).choices[0].message.content
    assert _status(server.app.test_client(), admin)["circuit"]["state"] == "closed"


def test_open_circuit_falls_back_to_the_other_provider(serve, settings, openai_for, bridge, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    client = openai_for(serve(**settings, GATEWAY_MODEL_ROUTES=json.dumps({"gpt-5": ["yupp2api", "bridge_direct"]})))
    yupp.script(*[Status(502)] * 3)
    for _ in range(3):
        reply = client.chat.completions.with_raw_response.create(model="gpt-5", messages=HI)
        assert reply.headers["X-Gateway-Provider"] == "lmarena_bridge"
    reply = client.chat.completions.with_raw_response.create(model="gpt-5", messages=HI)
    assert reply.headers["X-Gateway-Provider"] == "lmarena_bridge"
    assert len(chats(yupp)) == 3  # skipped while open


def test_client_errors_do_not_trip_the_breaker(serve, settings, openai_for, yupp):
    client = openai_for(serve(**settings))
    for _ in range(4):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "[[fake:badrequest]]"}])
    assert client.chat.completions.create(model=CLAUDE, messages=HI)


def test_circuit_state_is_shared_by_processes(make_app, settings, tmp_path):
    # A cool-down far longer than a Python process takes to start, even on a busy machine: the other process must
    # find the circuit open, not already due for its probe.
    app = make_app(**{**settings, "GATEWAY_BREAKER_COOLDOWN_SECONDS": 60})
    error = UpstreamError("down")
    with app.app_context():
        breaker = app.extensions["router"].breaker
        for _ in range(3):
            breaker.failure("yupp2api", error)
    code = (
        "import json, sys; from app.providers.breaker import Breaker; from app.store.breaker_state import FileState;"
        "b = Breaker(FileState(sys.argv[1]), failures=3, cooldown=1);"
        "print(json.dumps({'allow': b.allow('yupp2api'), 'state': b.snapshot('yupp2api')['state']}))"
    )
    state_file = str(Path(app.config["STORAGE_PATH"]).with_name("providers.json"))
    other_process = subprocess.run(
        [sys.executable, "-c", code, state_file], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert json.loads(other_process.stdout) == {"allow": False, "state": "open"}, other_process.stderr


def test_a_probe_before_the_cool_down_is_one_request_at_a_time(tmp_path):
    path = str(tmp_path / "providers.json")
    first = Breaker(FileState(path), failures=1, cooldown=60)
    second = Breaker(FileState(path), failures=1, cooldown=60)
    assert first.probe("p") and first.state_of("p") == "closed"  # closed: nothing to claim, the request just goes
    first.failure("p", UpstreamError("down"))
    assert not first.allow("p") and not second.allow("p")  # its cool-down runs: nobody is let in on the way
    assert [first.probe("p"), second.probe("p")] == [True, False]  # one probe, whichever process asks first
    assert second.state_of("p") == "half_open" and 55 < second.retry_in("p") <= 60  # the probe's lease
    first.failure("p", UpstreamError("still down"))  # the probe failed: open again, and the slot is free
    assert first.state_of("p") == "open" and second.probe("p")
    second.success("p", 5.0)
    assert second.state_of("p") == "closed" and second.allow("p")


def test_only_one_process_gets_the_half_open_probe(tmp_path):
    path = str(tmp_path / "providers.json")
    first = Breaker(FileState(path), failures=1, cooldown=0.2)
    second = Breaker(FileState(path), failures=1, cooldown=0.2)
    first.failure("p", UpstreamError("down"))
    assert not first.allow("p") and not second.allow("p")
    time.sleep(0.25)
    assert [first.allow("p"), second.allow("p")] == [True, False]


@pytest.mark.slow  # its own redis-server, then the cool-down
def test_breaker_state_in_redis_is_shared(tmp_path):
    server = RedisServer(tmp_path)
    try:
        prefix = f"t-{uuid.uuid4().hex[:6]}:"
        first = Breaker(RedisState(server.url, prefix=prefix), failures=2, cooldown=1.0)
        second = Breaker(RedisState(server.url, prefix=prefix), failures=2, cooldown=1.0)
        first.failure("p", UpstreamError("down"))
        second.failure("p", UpstreamError("down"))
        time.sleep(RedisState.CACHE_SECONDS + 0.05)  # let the first process's short read cache expire
        assert not first.allow("p") and first.snapshot("p")["state"] == "open"
        time.sleep(0.5)
        assert [first.allow("p"), second.allow("p")] == [True, False]
        second.success("p", 12.0)
        time.sleep(RedisState.CACHE_SECONDS + 0.05)
        assert first.snapshot("p")["state"] == "closed"
    finally:
        server.stop()


def test_providers_status_shows_no_secrets_and_needs_admin(make_app, settings, bridge, yupp, admin):
    app = make_app(**settings)
    client = app.test_client()
    assert client.get("/providers/status").status_code == 401
    response = client.get("/providers/status", headers=admin)
    text = response.get_data(as_text=True)
    assert "sk-yupp-test" not in text and "sk-lmab-test" not in text
    data = {p["name"]: p for p in response.get_json()["data"]}
    assert data["yupp2api"]["enabled"] is True and data["yupp2api"]["x_provider"] == "yupp2api"
    assert data["yupp2api"]["models_count"] == 4
    assert data["lmarena_bridge"]["x_provider"] == "bridge_direct"
    assert set(data["yupp2api"]["timeouts"]) == {"connect", "first_byte", "idle"}
    assert data["yupp2api"]["circuit"]["state"] == "closed"


def test_disabled_provider_is_listed_as_such(client, admin):
    data = {p["name"]: p for p in client.get("/providers/status", headers=admin).get_json()["data"]}
    assert data["yupp2api"]["enabled"] is False and data["yupp2api"]["circuit"] is None
