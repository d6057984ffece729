"""A circuit per bridge: a dead session bridge pauses itself only; /providers/status and /health show each bridge."""

from __future__ import annotations

import pytest

from app.errors import UpstreamError
from app.providers.breaker import Breaker
from app.providers.lmarena_bridge import bridge_key
from app.store.breaker_state import FileState
from tests.helpers.redis_server import free_port
from tests.upstreams.fake_bridge import FakeBridge

SID, MID = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
HI = [{"role": "user", "content": "hi"}]
FAILURES = 3


@pytest.fixture
def settings():
    # Three tries per request: retries within a request must still count as one failure.
    return {"GATEWAY_BREAKER_FAILURES": FAILURES, "LMARENA_BRIDGE_MAX_RETRIES": 2}


@pytest.fixture
def other_bridge():
    """A second healthy bridge, as a second browser tab would run."""
    with FakeBridge(api_key="sk-lmab-test", chunk_delay=0.01, reply="from the other bridge") as fake:
        yield fake


def register(client, admin, name: str, bridge_url: str | None) -> None:
    body = {"domain": "lmarena.ai", "session_name": name, "session_id": SID, "message_id": MID}
    if bridge_url:
        body["bridge_base_url"] = bridge_url
    response = client.post("/session/register", json=body, headers=admin)
    assert response.status_code in (200, 201), response.get_json()


def chat(client, auth, session: str | None = None, text: str = "hi"):
    headers = {**auth, **({"X-Session-Name": session} if session else {})}
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": text}]}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def circuit(client, url: str) -> dict:
    return client.application.extensions["router"].breaker.snapshot(bridge_key(url))


def kill_a_session_bridge(client, auth, admin, dead_url: str, other_url: str) -> None:
    """Bind "dead" to a closed port and "alive" to other_url, then send "dead" enough requests to open its circuit."""
    register(client, admin, "dead", dead_url)
    register(client, admin, "alive", other_url)
    for _ in range(FAILURES):
        response = chat(client, auth, "dead")
        assert response.status_code == 502, response.get_json()
        assert response.get_json()["error"]["code"] == "upstream_unreachable"
    paused = chat(client, auth, "dead")
    assert paused.status_code == 503 and paused.get_json()["error"]["code"] == "circuit_open"


def test_dead_session_bridge_opens_only_its_own_circuit(make_app, settings, bridge, other_bridge, auth, admin):
    client = make_app(**settings).test_client()
    dead_url = f"http://127.0.0.1:{free_port()}"
    kill_a_session_bridge(client, auth, admin, dead_url, other_bridge.url)
    # Plain requests and the other session still reach their bridges.
    for _ in range(FAILURES + 1):
        assert chat(client, auth).status_code == 200
        assert chat(client, auth, "alive").get_json()["choices"][0]["message"]["content"] == "from the other bridge"
    configured, alive, dead = (circuit(client, url) for url in (bridge.url, other_bridge.url, dead_url))
    assert configured["state"] == "closed" and alive["state"] == "closed"
    assert configured["requests"] == alive["requests"] == FAILURES + 1
    assert configured["errors"] == alive["errors"] == 0
    assert dead["state"] == "open" and dead["retry_at"]
    # Three requests of three attempts each: three failures, not nine.
    assert dead["consecutive_failures"] == dead["errors"] == dead["requests"] == FAILURES
    assert dead["last_error"]["code"] == "upstream_unreachable"


def test_retries_in_one_request_count_once(make_app, settings, other_bridge, auth, admin):
    client = make_app(**settings).test_client()
    register(client, admin, "flaky", other_bridge.url)
    response = chat(client, auth, "flaky", "[[fake:status:502]]")
    assert response.status_code == 502
    assert len([r for r in other_bridge.requests if r.path == "/v1/chat/completions"]) == 3
    flaky = circuit(client, other_bridge.url)
    assert (flaky["state"], flaky["consecutive_failures"], flaky["requests"], flaky["errors"]) == (
        "closed",
        1,
        1,
        1,
    )


def test_breaker_counts_a_request_once_and_saves_pending_successes(tmp_path):
    breaker = Breaker(FileState(str(tmp_path / "providers.json")), failures=2, cooldown=30, stats_interval=60)
    for _ in range(3):
        breaker.success("b", 10.0)  # the first is written; the other two wait for the stats interval
    breaker.failure("b", UpstreamError("down"))  # this request is a fourth: pending counts are saved with it
    breaker.success("b", 10.0, new_request=False)  # the same request, answering on its retry
    breaker.failure("b", UpstreamError("cut"), new_request=False)  # and failing after its stream started
    snapshot = breaker.snapshot("b")
    assert (snapshot["requests"], snapshot["errors"], snapshot["consecutive_failures"]) == (4, 2, 1)
    breaker.success("b", 10.0)
    breaker.success("b", 10.0)
    assert breaker.snapshot("b")["requests"] == 6  # a snapshot saves this process's pending count first
    assert breaker.names() == ["b"]
