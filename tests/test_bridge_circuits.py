"""A circuit per bridge: a dead session bridge pauses itself only; /providers/status and /health show each bridge."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import openai
import pytest
import redis

from app.errors import UpstreamError
from app.providers.breaker import Breaker
from app.providers.lmarena_bridge import bridge_key
from app.store.base import isoformat, parse_time
from app.store.breaker_state import FileState
from tests.helpers.redis_server import RedisServer, free_port
from tests.test_dashboard import row
from tests.upstreams.fake_bridge import DEFAULT_REPLY, FakeBridge

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


def bridges(client, admin) -> dict[str, dict]:
    data = client.get("/providers/status", headers=admin).get_json()["data"]
    row = next(p for p in data if p["name"] == "lmarena_bridge")
    return {b["base_url"]: b for b in row["bridges"]}


def kill_a_session_bridge(client, auth, admin, dead_url: str, other_url: str) -> None:
    """Bind "dead" to a closed port and "alive" to other_url, then send "dead" enough requests to open its circuit."""
    register(client, admin, "dead", dead_url)
    register(client, admin, "alive", other_url)
    for _ in range(FAILURES):
        response = chat(client, auth, "dead")
        assert response.status_code == 502, response.get_json()
        assert response.get_json()["error"]["code"] == "upstream_unreachable"
    assert bridges(client, admin)[dead_url]["circuit"]["state"] == "open"


def test_dead_session_bridge_opens_only_its_own_circuit(make_app, settings, bridge, other_bridge, auth, admin):
    client = make_app(**settings).test_client()
    dead_url = f"http://127.0.0.1:{free_port()}"
    kill_a_session_bridge(client, auth, admin, dead_url, other_bridge.url)
    # Plain requests and the other session still reach their bridges.
    for _ in range(FAILURES + 1):
        assert chat(client, auth).status_code == 200
        assert chat(client, auth, "alive").get_json()["choices"][0]["message"]["content"] == "from the other bridge"
    known = bridges(client, admin)
    assert [b["source"] for b in known.values()] == ["configured", "session", "session"]
    dead, configured, alive = known[dead_url], known[bridge.url], known[other_bridge.url]
    assert configured["circuit"]["state"] == "closed" and alive["circuit"]["state"] == "closed"
    assert configured["circuit"]["requests"] == alive["circuit"]["requests"] == FAILURES + 1
    assert configured["circuit"]["errors"] == alive["circuit"]["errors"] == 0
    circuit = dead["circuit"]
    assert circuit["state"] == "open" and circuit["retry_at"]
    # Three requests of three attempts each: three failures, not nine.
    assert circuit["consecutive_failures"] == circuit["errors"] == circuit["requests"] == FAILURES
    assert circuit["last_error"]["code"] == "upstream_unreachable"


def chats(fake) -> list:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


def ask(client: openai.OpenAI, text: str = "hi", stream: bool = False) -> str:
    """Return the answer's text to one chat through the official client."""
    messages = [{"role": "user", "content": text}]
    if not stream:
        return client.chat.completions.create(model="gpt-5", messages=messages).choices[0].message.content
    chunks = client.chat.completions.create(model="gpt-5", messages=messages, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize(
    ("marker", "code"),
    [
        ("midfail", "bridge_error"),  # the generation broke mid-way: a JSON answer is a 500 with the marker
        ("disconnect", "bridge_error"),
        # The bridge's own "Response timed out after N seconds.", 0.3 s each time: slow.
        pytest.param("hang", "upstream_timeout", marks=pytest.mark.slow),
        ("error", "rate_limit_exceeded"),
        ("cloudflare", "upstream_verification"),
    ],
)
def test_lmarena_failures_through_a_healthy_bridge_never_open_its_circuit(
    serve, openai_for, settings, bridge, admin, marker, code
):
    server = serve(**settings)
    client = openai_for(server)
    for _ in range(FAILURES + 1):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, f"hi [[fake:{marker}]]")
        assert caught.value.body["code"] == code
    # The bridge answered every time: plain requests still reach it, and its circuit counted nothing.
    assert ask(client) == DEFAULT_REPLY
    circuit = bridges(server.app.test_client(), admin)[bridge.url]["circuit"]
    assert (circuit["state"], circuit["consecutive_failures"], circuit["errors"]) == ("closed", 0, 0)
    # One generation per request: a tab that failed generating is not asked again (LMARENA_BRIDGE_MAX_RETRIES=2).
    assert len(chats(bridge)) == FAILURES + 2


@pytest.mark.parametrize(("marker", "code"), [("midfail", "bridge_error"), ("drop", "upstream_stream_broken")])
def test_a_failure_after_content_never_counts(serve, openai_for, settings, bridge, admin, marker, code):
    server = serve(**settings)
    client = openai_for(server)
    for _ in range(FAILURES + 1):
        with pytest.raises(openai.APIError) as caught:
            ask(client, f"hi [[fake:{marker}]]", stream=True)
        assert caught.value.body["code"] == code  # the error chunk after "Hello from"
    assert ask(client, stream=True) == DEFAULT_REPLY
    circuit = bridges(server.app.test_client(), admin)[bridge.url]["circuit"]
    assert (circuit["state"], circuit["consecutive_failures"], circuit["errors"]) == ("closed", 0, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_dead_session_bridge_is_named_to_clients_without_its_url(make_app, bridge, auth, admin, caplog, stream):
    client = make_app().test_client()
    port = free_port()
    dead_url = f"http://127.0.0.1:{port}/private-tab-path"
    register(client, admin, "dead", dead_url)
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = client.post("/v1/chat/completions", json=body, headers={**auth, "X-Session-Name": "dead"})
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["message"].startswith("The session's bridge cannot be reached (connection refused).")
    answer = response.get_data(as_text=True)
    assert str(port) not in answer and "private-tab-path" not in answer
    # The admin still finds the URL: in the log, and in /providers/status.
    assert dead_url in caplog.text
    assert bridges(client, admin)[dead_url]["circuit"]["last_error"]["code"] == "upstream_unreachable"
    assert str(port) not in json.dumps(bridges(client, admin)[dead_url]["circuit"]["last_error"])


def test_the_configured_bridge_is_named_to_clients_without_its_url(make_app, auth):
    port = free_port()
    client = make_app(LMARENA_BRIDGE_BASE_URL=f"http://127.0.0.1:{port}").test_client()
    response = chat(client, auth)
    assert response.status_code == 502
    assert response.get_json()["error"]["message"].startswith("LMArena Bridge cannot be reached")
    assert str(port) not in response.get_data(as_text=True)


def test_retries_in_one_request_count_once(make_app, settings, other_bridge, auth, admin):
    client = make_app(**settings).test_client()
    register(client, admin, "flaky", other_bridge.url)
    response = chat(client, auth, "flaky", "[[fake:status:502]]")
    assert response.status_code == 502
    assert len([r for r in other_bridge.requests if r.path == "/v1/chat/completions"]) == 3
    circuit = bridges(client, admin)[other_bridge.url]["circuit"]
    assert (circuit["state"], circuit["consecutive_failures"], circuit["requests"], circuit["errors"]) == (
        "closed",
        1,
        1,
        1,
    )


def test_the_configured_bridge_keeps_its_provider_row(make_app, settings, bridge, admin):
    data = make_app(**settings).test_client().get("/providers/status", headers=admin).get_json()["data"]
    row = next(p for p in data if p["name"] == "lmarena_bridge")
    assert row["base_url"] == bridge.url and row["circuit"]["state"] == "closed"
    assert row["bridges"] == [{"base_url": bridge.url, "source": "configured", "circuit": row["circuit"]}]
    assert "bridges" not in next(p for p in data if p["name"] == "yupp2api")


def test_other_processes_bridges_come_from_the_shared_state(make_app, settings, other_bridge, auth, admin):
    first = make_app(**settings).test_client()
    dead_url = f"http://127.0.0.1:{free_port()}"
    kill_a_session_bridge(first, auth, admin, dead_url, other_bridge.url)
    assert chat(first, auth, "alive").status_code == 200
    second = make_app(**settings).test_client()  # another process: same storage, no bridges of its own built yet
    known = bridges(second, admin)
    assert known[dead_url]["source"] == known[other_bridge.url]["source"] == "shared_state"
    assert known[dead_url]["circuit"]["state"] == "open"
    # Nothing else serves "dead": this process probes the bridge (one request at a time), which fails, and the
    # circuit stays open for both.
    probe = chat(second, auth, "dead")
    assert probe.status_code == 502 and probe.get_json()["error"]["code"] == "upstream_unreachable"
    circuit = bridges(first, admin)[dead_url]["circuit"]
    assert circuit["state"] == "open" and circuit["consecutive_failures"] == FAILURES + 1


def test_health_counts_bridges_without_naming_them(make_app, settings, bridge, other_bridge, auth, admin):
    client = make_app(**settings).test_client()
    dead_url = f"http://127.0.0.1:{free_port()}"
    kill_a_session_bridge(client, auth, admin, dead_url, other_bridge.url)
    assert chat(client, auth, "alive").status_code == 200
    response = client.get("/health")
    body = response.get_json()
    assert body["bridges"] == {"up": 2, "total": 3}
    assert body["status"] == "ok"  # a session's dead bridge is that session's trouble
    assert body["upstreams"]["lmarena_bridge"]["base_url"] == bridge.url  # the configured one, as before
    text = response.get_data(as_text=True)
    assert dead_url not in text and other_bridge.url not in text


def test_dashboard_lists_each_bridge(make_app, settings, bridge, other_bridge, auth, admin):
    client = make_app(**settings).test_client()
    dead_url = f"http://127.0.0.1:{free_port()}"
    kill_a_session_bridge(client, auth, admin, dead_url, other_bridge.url)
    page = client.get("/dashboard", headers=admin)
    assert row(page, "providers", "lmarena_bridge")[3] == "closed"  # the configured bridge, as before
    assert row(page, "bridges", bridge.url)[1:3] == ["configured", "closed"]
    dead = row(page, "bridges", dead_url)
    assert dead[1:3] == ["session", "open"] and dead[3] != "—"
    assert dead[4] != "—"  # paused too: the outcome table pauses an unreachable bridge, in a pool or not
    assert dead[5:8] == [str(FAILURES)] * 3
    assert "refused" in dead[9]


def test_health_counts_no_bridges_when_the_bridge_is_disabled(make_app, with_yupp):
    body = make_app(**with_yupp, LMARENA_BRIDGE_ENABLED=False).test_client().get("/health").get_json()
    assert body["bridges"] == {"up": 0, "total": 0}


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


@pytest.mark.slow  # its own redis-server
def test_bridge_circuits_in_redis(tmp_path, make_app, settings, bridge, other_bridge, auth, admin):
    server = RedisServer(tmp_path)
    (tmp_path / "storage").mkdir()  # the secrets generated once still live there
    try:
        redis = {**settings, "SESSION_STORE": "redis", "REDIS_URL": server.url}
        client = make_app(**redis).test_client()
        dead_url = f"http://127.0.0.1:{free_port()}"
        kill_a_session_bridge(client, auth, admin, dead_url, other_bridge.url)
        assert chat(client, auth).status_code == 200
        assert chat(client, auth, "alive").status_code == 200
        known = bridges(make_app(**redis).test_client(), admin)  # another process, sharing Redis
        assert known[dead_url]["circuit"]["state"] == "open" and known[dead_url]["source"] == "shared_state"
        assert known[bridge.url]["circuit"]["state"] == known[other_bridge.url]["circuit"]["state"] == "closed"
        assert known[dead_url]["circuit"]["errors"] == FAILURES
    finally:
        server.stop()


def age(breaker, url: str, days: float) -> None:
    """Move every time in a bridge's circuit record days into the past, as if it had been idle since."""
    shift = days * 86400

    def older(record):
        for stamp in ("last_success_at", "last_failure_at"):
            if record.get(stamp):
                record[stamp] = isoformat(parse_time(record[stamp]) - timedelta(seconds=shift))
        for epoch in ("opened_at", "retry_at", "probe_until", "cooldown_until"):
            if record.get(epoch):
                record[epoch] -= shift
        return record

    assert breaker.state.update(bridge_key(url), older)[1]


@pytest.fixture(params=["json", "redis"])
def store_settings(request, settings, tmp_path):
    """Settings for each breaker state: the JSON file beside the sessions, or a Redis database of its own."""
    if request.param == "json":
        return {**settings, "GATEWAY_CRON_TOKEN": "cron-secret"}
    server = request.getfixturevalue("redis_server")
    url = server.url.rsplit("/", 1)[0] + "/7"  # a database no other test uses: this test starts it empty
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    (tmp_path / "storage").mkdir(exist_ok=True)  # the secrets generated once still live there
    return {**settings, "GATEWAY_CRON_TOKEN": "cron-secret", "SESSION_STORE": "redis", "REDIS_URL": url}


def test_cleanup_prunes_idle_circuits_of_bridges_no_session_uses(
    make_app, store_settings, bridge, other_bridge, auth, admin
):
    app = make_app(**store_settings)
    client = app.test_client()
    gone_url, fresh_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    register(client, admin, "alive", other_bridge.url)
    for name, url in (("gone", gone_url), ("fresh", fresh_url)):
        register(client, admin, name, url)
        assert chat(client, auth, name).status_code == 502  # a record for its bridge
        assert client.delete(f"/session/lmarena.ai/{name}", headers=admin).status_code == 200
    assert chat(client, auth, "alive").status_code == chat(client, auth).status_code == 200
    breaker = app.extensions["router"].breaker
    for url in (gone_url, other_bridge.url, bridge.url):  # fresh_url's record stays recent
        age(breaker, url, 40)
    cron = {"X-Cron-Token": "cron-secret"}

    listed = client.post("/cron/cleanup?dry_run=1", headers=cron).get_json()["circuits"]
    assert listed == {"count": 1, "removed": [gone_url]}
    assert gone_url in bridges(client, admin)

    assert client.post("/cron/cleanup", headers=cron).get_json()["circuits"] == listed
    assert bridge_key(gone_url) not in breaker.names()
    # In use, configured, or recently used: kept. Another process sees the same.
    known = bridges(make_app(**store_settings).test_client(), admin)
    assert set(known) == {bridge.url, other_bridge.url, fresh_url}
    assert known[other_bridge.url]["circuit"]["requests"] == 1
    assert client.post("/cron/cleanup", headers=cron).get_json()["circuits"] == {"count": 0, "removed": []}


def test_a_circuit_used_after_the_listing_is_not_pruned(tmp_path):
    breaker = Breaker(FileState(str(tmp_path / "providers.json")), failures=2, cooldown=30)
    for name in ("old", "revived"):
        breaker.failure(name, UpstreamError("down"))
        breaker.state.update(name, lambda r: {**r, "last_failure_at": "2000-01-01T00:00:00Z", "opened_at": 0})
    cutoff = time.time() - 86400
    assert breaker.forget(["old", "revived"], cutoff, dry_run=True) == ["old", "revived"]
    breaker.success("revived", 5.0)  # a request between the listing and the removal
    assert breaker.forget(["old", "revived"], cutoff) == ["old"]
    assert breaker.names() == ["revived"]
