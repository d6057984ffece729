"""Pools of sessions: round robin over member bridges (one fake bridge per browser tab), cooldowns, key routes."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import openai
import pytest

from app import registration_tokens
from app.config import ConfigError, load_settings
from app.providers.lmarena_bridge import bridge_key
from app.store import Session, get_store
from tests.conftest import CLIENT_KEY
from tests.helpers.redis_server import free_port
from tests.test_dashboard import row
from tests.upstreams.fake_bridge import FakeBridge
from tests.upstreams.script import Status

A = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222")
B = ("33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444")
ROUTED_KEY = "sk-gw-routed=="  # ends in '=': the key is what stands before the last '='
POOL = {"X-Session-Pool": "team"}


def register(client, admin, name, ids, bridge_url, pool="team", domain="lmarena.ai", models=None):
    body = {"domain": domain, "session_name": name, "session_id": ids[0], "message_id": ids[1], "pool": pool}
    if bridge_url:
        body["bridge_base_url"] = bridge_url
    if models:
        body["models"] = models
    response = client.post("/session/register", json=body, headers=admin)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()["session"]


def enrol(client, admin, one_url, two_url):
    register(client, admin, "tab-one", A, one_url)
    register(client, admin, "tab-two", B, two_url)


def chat(client, headers, stream=False):
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def text_of(response) -> str:
    if response.mimetype != "text/event-stream":
        return response.get_json()["choices"][0]["message"]["content"]
    frames = [line[6:] for line in response.get_data(as_text=True).splitlines() if line.startswith("data: {")]
    return "".join((json.loads(f)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for f in frames)


def chats(fake) -> list:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


def test_pool_spreads_requests_over_its_members(app, client, admin, auth, tabs, bridge):
    one, two = tabs
    shown = register(client, admin, "tab-one", A, one.url)
    register(client, admin, "tab-two", B, two.url)
    register(client, admin, "elsewhere", A, one.url, pool="other")
    assert shown["pool"] == "team"
    answers = [text_of(chat(client, {**auth, **POOL}, stream=n % 2 == 1)) for n in range(12)]
    assert sorted(answers) == ["from tab one"] * 6 + ["from tab two"] * 6
    assert {r.json["session_id"] for r in chats(one)} == {A[0]} and {r.json["session_id"] for r in chats(two)} == {B[0]}
    assert chats(bridge) == []


def test_a_member_registered_after_pool_requests_joins_within_the_listing_cache(client, admin, auth, tabs):
    from app.pool_rules import MEMBERS_SECONDS

    one, two = tabs
    register(client, admin, "tab-one", A, one.url)
    assert text_of(chat(client, {**auth, **POOL})) == "from tab one"  # the member list is now cached
    register(client, admin, "tab-two", B, two.url)
    time.sleep(MEMBERS_SECONDS + 0.1)
    answers = {text_of(chat(client, {**auth, **POOL})) for _ in range(4)}
    assert answers == {"from tab one", "from tab two"}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "fault",
    [{"no_browser": True}, {"waiting_for_refresh": True}, {"marker": "error"}, {"marker": "cloudflare"}],
    ids=["no-browser", "waiting-for-refresh", "lmarena-429", "cloudflare"],
)
def test_session_side_failure_pauses_the_member_and_the_other_serves(app, client, admin, auth, tabs, fault, stream):
    one, two = tabs
    enrol(client, admin, one.url, two.url)
    for name, value in fault.items():
        setattr(one, name, value)
    for _ in range(6):
        response = chat(client, {**auth, **POOL}, stream)
        assert response.status_code == 200 and text_of(response) == "from tab two"
    breaker = app.extensions["router"].breaker
    assert 50 < breaker.cooldown_left(bridge_key(one.url)) <= 60
    assert len(chats(one)) == 1  # paused after its one failure
    # A session-side failure is not the bridge's: its circuit counts nothing.
    assert breaker.snapshot(bridge_key(one.url))["errors"] == 0


def test_unreachable_member_counts_against_its_circuit_and_is_paused(app, client, admin, auth, tabs):
    dead = f"http://127.0.0.1:{free_port()}"
    enrol(client, admin, dead, tabs[1].url)
    for _ in range(3):
        assert text_of(chat(client, {**auth, **POOL})) == "from tab two"
    breaker = app.extensions["router"].breaker
    assert breaker.cooldown_left(bridge_key(dead)) is not None
    assert breaker.snapshot(bridge_key(dead))["last_error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("stream", [False, True])
def test_every_member_out_is_one_429_with_retry_after(make_app, admin, auth, tabs, stream):
    client = make_app(GATEWAY_POOL_COOLDOWN_SECONDS=40).test_client()
    one, two = tabs
    enrol(client, admin, one.url, two.url)
    one.no_browser, two.marker = True, "error"
    response = chat(client, {**auth, **POOL}, stream)
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "pool_exhausted"
    assert 35 <= int(response.headers["Retry-After"]) <= 40
    seen = len(chats(one)) + len(chats(two))
    again = chat(client, {**auth, **POOL}, stream)
    assert again.status_code == 429 and len(chats(one)) + len(chats(two)) == seen  # no bridge asked while paused


def test_pool_without_active_member_is_503(client, admin, auth):
    response = chat(client, {**auth, "X-Session-Pool": "nobody"})
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "pool_empty"


def test_cooldown_set_by_one_process_is_honoured_by_another(make_app, admin, auth, tabs):
    first, second = make_app().test_client(), make_app().test_client()  # same storage folder
    one, two = tabs
    enrol(first, admin, one.url, two.url)
    one.no_browser = True
    for _ in range(2):
        assert text_of(chat(first, {**auth, **POOL})) == "from tab two"
    one.no_browser = False
    asked = len(chats(one))
    for _ in range(4):
        assert text_of(chat(second, {**auth, **POOL})) == "from tab two"
    assert len(chats(one)) == asked


def test_key_route_and_default_pool_serve_requests_without_headers(make_app, admin, tabs, bridge):
    one, two = tabs
    client = make_app(
        GATEWAY_API_KEYS=f"{CLIENT_KEY},{ROUTED_KEY}",
        GATEWAY_KEY_ROUTES=f"{ROUTED_KEY}=lmarena.ai/team",
        GATEWAY_DEFAULT_POOL="lmarena.ai/solo",
    ).test_client()
    enrol(client, admin, one.url, None)
    register(client, admin, "solo", B, two.url, pool="solo")
    routed = {"Authorization": f"Bearer {ROUTED_KEY}"}
    assert {text_of(chat(client, routed)) for _ in range(4)} == {"from tab one", "Hello from the real bridge"}
    # The other key has no route: the default pool serves it.
    assert text_of(chat(client, {"Authorization": f"Bearer {CLIENT_KEY}"})) == "from tab two"
    # Headers come first: a session by name, then a pool by name.
    assert text_of(chat(client, {**routed, "X-Session-Name": "solo"})) == "from tab two"
    assert text_of(chat(client, {**routed, "X-Session-Pool": "solo"})) == "from tab two"


def test_x_provider_yupp2api_bypasses_pools(make_app, admin, auth, tabs, with_yupp, yupp):
    client = make_app(**with_yupp, GATEWAY_DEFAULT_POOL="lmarena.ai/team").test_client()
    enrol(client, admin, *(t.url for t in tabs))
    response = client.post(
        "/v1/chat/completions",
        json={"model": "GPT-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        headers={**auth, **POOL, "X-Provider": "yupp2api"},
    )
    assert response.status_code == 200 and response.headers["X-Gateway-Provider"] == "yupp2api"
    assert chats(tabs[0]) == chats(tabs[1]) == []


def test_only_the_admin_key_may_set_a_pool(app, client):
    token = registration_tokens.mint(app.extensions["regtoken_secret"], "tab-one", ["lmarena.ai"])
    body = {"domain": "lmarena.ai", "session_name": "tab-one", "session_id": A[0], "message_id": A[1]}
    headers = {"X-Registration-Token": token}
    refused = client.post("/session/register", json={**body, "pool": "team"}, headers=headers)
    assert refused.status_code == 403
    assert client.post("/session/register", json=body, headers=headers).get_json()["session"]["pool"] is None


def test_bad_pool_name_is_refused(client, admin):
    body = {"domain": "lmarena.ai", "session_name": "x", "session_id": A[0], "message_id": A[1], "pool": "a b"}
    response = client.post("/session/register", json=body, headers=admin)
    assert response.status_code == 400 and response.get_json()["error"]["param"] == "pool"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"GATEWAY_KEY_ROUTES": "sk-x=lmarena.ai/team"}, "needs client keys"),
        ({"GATEWAY_API_KEYS": "sk-a", "GATEWAY_KEY_ROUTES": "sk-b=lmarena.ai/team"}, "not in GATEWAY_API_KEYS"),
        ({"GATEWAY_API_KEYS": "sk-a", "GATEWAY_KEY_ROUTES": "sk-a=lmarena.ai"}, "GATEWAY_KEY_ROUTES="),
        ({"GATEWAY_API_KEYS": "sk-a", "GATEWAY_KEY_ROUTES": "sk-a=example.com/team"}, "GATEWAY_SESSION_DOMAINS"),
        ({"GATEWAY_DEFAULT_POOL": "team"}, "GATEWAY_DEFAULT_POOL="),
        ({"GATEWAY_POOL_COOLDOWN_SECONDS": "-1"}, "GATEWAY_POOL_COOLDOWN_SECONDS="),
    ],
)
def test_pool_settings_are_checked_at_start_up(settings, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(settings, environ={}, dotenv_path=tmp_path / "absent.env")
    assert "sk-a" not in str(caught.value) and "sk-b" not in str(caught.value)


def test_key_routes_split_at_the_last_equals_sign(tmp_path):
    config = load_settings(
        {"GATEWAY_API_KEYS": ROUTED_KEY, "GATEWAY_KEY_ROUTES": f"{ROUTED_KEY}=Canary.lmarena.ai/team"},
        environ={},
        dotenv_path=tmp_path / "absent.env",
    )
    assert config["GATEWAY_KEY_ROUTES"] == {ROUTED_KEY: ("canary.lmarena.ai", "team")}


def test_silent_member_is_left_after_the_first_byte_timeout_and_paused(make_app, admin, auth, tabs):
    client = make_app(LMARENA_BRIDGE_TIMEOUT=0.5, LMARENA_BRIDGE_MAX_RETRIES=2).test_client()
    one, two = tabs
    enrol(client, admin, one.url, two.url)
    one.headers_delay = 1.5
    for stream in (False, True):
        assert text_of(chat(client, {**auth, **POOL}, stream)) == "from tab two"
    assert len(chats(one)) == 1  # never the same bridge again, retries or not
    breaker = client.application.extensions["router"].breaker
    assert breaker.cooldown_left(bridge_key(one.url)) is not None
    last_error = breaker.snapshot(bridge_key(one.url))["last_error"]["code"]
    assert last_error in ("upstream_timeout", "upstream_first_byte_timeout")


def test_other_lmarena_error_moves_to_the_next_member_once(app, client, admin, auth, tabs):
    one, two = tabs
    with FakeBridge(api_key="sk-lmab-test", chunk_delay=0.01, reply="from tab three") as three:
        register(client, admin, "a", A, one.url)
        register(client, admin, "b", B, two.url)
        register(client, admin, "c", A, three.url)
        one.marker = two.marker = "disconnect"
        response = chat(client, {**auth, **POOL})  # the first turn: a, then b, and no further
        assert response.status_code == 502 and response.get_json()["error"]["code"] == "bridge_error"
        assert (len(chats(one)), len(chats(two)), len(chats(three))) == (1, 1, 0)
        one.marker = ""
        assert text_of(chat(client, {**auth, **POOL})) == "from tab three"  # b fails, c answers
        breaker = app.extensions["router"].breaker
        for fake in (one, two):  # lmarena.ai's failure: neither paused nor counted against the bridge
            assert breaker.cooldown_left(bridge_key(fake.url)) is None
            assert breaker.snapshot(bridge_key(fake.url))["errors"] == 0


def test_failure_after_content_is_an_error_chunk_and_pauses_nobody(app, client, admin, auth, tabs):
    one, two = tabs
    enrol(client, admin, one.url, two.url)
    one.marker = two.marker = "midfail"
    body = chat(client, {**auth, **POOL}, stream=True).get_data(as_text=True)
    assert '"code": "bridge_error"' in body.replace('":"', '": "') and body.rstrip().endswith("data: [DONE]")
    assert len(chats(one)) + len(chats(two)) == 1
    breaker = app.extensions["router"].breaker
    assert all(breaker.cooldown_left(bridge_key(f.url)) is None for f in tabs)
    assert all(breaker.snapshot(bridge_key(f.url))["errors"] == 0 for f in tabs)


@pytest.mark.parametrize("who", ["session", "default-bridge"])
@pytest.mark.parametrize(
    ("step", "pause"), [(None, 45), (Status(429, retry_after=120), 120)], ids=["lmarena", "bridge-own"]
)
def test_rate_limit_outside_a_pool_says_when_the_pause_ends_and_pools_honour_it(
    make_app, admin, auth, tabs, bridge, who, step, pause
):
    client = make_app(GATEWAY_POOL_COOLDOWN_SECONDS=45).test_client()
    one, two = tabs
    limited = one if who == "session" else bridge
    register(client, admin, "tab-one", A, one.url if who == "session" else None)  # None: the default bridge
    register(client, admin, "tab-two", B, two.url)
    if step is None:
        limited.marker = "error"  # lmarena.ai's 429 through the bridge, which carries no Retry-After
    else:
        limited.script(step)  # a 429 of the bridge's own, with a Retry-After longer than the cooldown
    headers = {**auth, "X-Session-Name": "tab-one"} if who == "session" else auth
    response = chat(client, headers)
    assert response.status_code == 429 and response.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response.headers["Retry-After"]) == pause
    breaker = client.application.extensions["router"].breaker
    assert pause - 5 < breaker.cooldown_left(bridge_key(limited.url)) <= pause
    assert breaker.snapshot(bridge_key(limited.url))["errors"] == 0  # the session's trouble, not the bridge's
    # The pause is the tab's, whichever request found it: the pool passes it over.
    assert {text_of(chat(client, {**auth, **POOL})) for _ in range(4)} == {"from tab two"}
    assert len(chats(limited)) == 1


def image(gateway, **headers):
    return gateway.images.generate(model="nano-banana", prompt="a cat", extra_headers={**POOL, **headers})


@pytest.mark.parametrize("fault", [{"no_browser": True}, {"marker": "error"}], ids=["no-browser", "lmarena-429"])
def test_images_in_a_pool_move_past_a_member_out_and_pause_it(serve, openai_for, admin, tabs, fault):
    server = serve()
    one, two = tabs
    for fake in tabs:
        fake.image_url = fake.url + "/img/{:04d}.png"
    enrol(server.app.test_client(), admin, one.url, two.url)
    for name, value in fault.items():
        setattr(one, name, value)
    gateway = openai_for(server)
    for _ in range(3):
        assert image(gateway).data[0].url.startswith(two.url)
    assert len(chats(one)) == 1  # paused after its one failure, as for chat
    assert {r.json["session_id"] for r in chats(two)} == {B[0]}
    assert 50 < server.app.extensions["router"].breaker.cooldown_left(bridge_key(one.url)) <= 60


def test_images_in_a_pool_take_turns_one_call_per_image(serve, openai_for, admin, tabs):
    server = serve()
    for fake in tabs:
        fake.image_url = fake.url + "/img/{:04d}.png"
    enrol(server.app.test_client(), admin, *(t.url for t in tabs))
    result = openai_for(server).images.generate(model="nano-banana", prompt="two cats", n=2, extra_headers=POOL)
    assert sorted(d.url.rsplit("/img/", 1)[0] for d in result.data) == sorted(t.url for t in tabs)


def test_images_in_a_pool_with_every_member_out_is_one_429_then_503_without_members(serve, openai_for, admin, tabs):
    server = serve(GATEWAY_POOL_COOLDOWN_SECONDS=40)
    one, two = tabs
    enrol(server.app.test_client(), admin, one.url, two.url)
    one.no_browser, two.marker = True, "error"
    gateway = openai_for(server)
    with pytest.raises(openai.RateLimitError) as caught:
        image(gateway)
    assert caught.value.body["code"] == "pool_exhausted"
    assert 35 <= int(caught.value.response.headers["Retry-After"]) <= 40
    assert len(chats(one)) == len(chats(two)) == 1
    with pytest.raises(openai.InternalServerError) as empty:
        image(gateway, **{"X-Session-Pool": "nobody"})
    assert empty.value.status_code == 503 and empty.value.body["code"] == "pool_empty"


def test_status_and_dashboard_show_each_member_paused_until_when_and_why(client, admin, auth, tabs):
    one, two = tabs
    enrol(client, admin, one.url, two.url)
    register(client, admin, "quiet", B, two.url, pool="spare")
    one.no_browser = True
    for _ in range(3):
        assert chat(client, {**auth, **POOL}).status_code == 200
    status = client.get("/providers/status", headers=admin).get_json()
    assert [(p["domain"], p["pool"]) for p in status["pools"]] == [("lmarena.ai", "spare"), ("lmarena.ai", "team")]
    members = {m["session_name"]: m for m in status["pools"][1]["members"]}
    paused, ready = members["tab-one"], members["tab-two"]
    assert (paused["state"], paused["base_url"], paused["active"]) == ("paused", one.url, True)
    left = datetime.fromisoformat(paused["cooldown_until"]) - datetime.now(UTC)
    assert timedelta(seconds=50) < left <= timedelta(seconds=60)
    # The bridge answered (its tab had no browser): a request, and no error of the bridge's.
    assert paused["last_error"]["code"] == "bridge_no_browser" and (paused["requests"], paused["errors"]) == (1, 0)
    assert (ready["state"], ready["cooldown_until"], ready["last_error"], ready["requests"]) == ("ready", None, None, 3)
    # The same bridge in the bridges list carries the pause too.
    bridges = next(p for p in status["data"] if p["name"] == "lmarena_bridge")["bridges"]
    assert next(b for b in bridges if b["base_url"] == one.url)["circuit"]["cooldown_until"] == paused["cooldown_until"]
    page = client.get("/dashboard", headers=admin)
    cells = row(page, "pools", "tab-one")
    assert cells[1:5] == ["team", "lmarena.ai", "paused", one.url] and cells[5] != "—"
    assert "no browser" in cells[8]
    assert row(page, "pools", "tab-two")[3] == "ready"
    # /health counts bridges; it names no member, pool or URL.
    health = client.get("/health").get_data(as_text=True)
    assert one.url not in health and two.url not in health and "tab-one" not in health and "team" not in health


def test_a_member_without_heartbeat_shows_inactive(app, client, admin, tabs):
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with app.app_context():
        session = Session("lmarena.ai", "tab-one", *A, bridge_base_url=tabs[0].url, pool="team")
        get_store().register(session, now=an_hour_ago, limit=100, active_since=an_hour_ago)
    member = client.get("/providers/status", headers=admin).get_json()["pools"][0]["members"][0]
    assert (member["session_name"], member["state"], member["active"]) == ("tab-one", "inactive", False)
