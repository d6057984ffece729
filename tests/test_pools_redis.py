"""Pools with SESSION_STORE=redis: members share the load, a paused member is skipped, every instance sees the pause."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from app.providers.lmarena_bridge import bridge_key
from app.store.breaker_state import RedisState
from tests.test_pools import A, B, chats

HI = [{"role": "user", "content": "hi"}]
POOL = {"X-Session-Pool": "team"}
FAULTS = {"no-browser": {"no_browser": True}, "lmarena-429": {"marker": "error"}}


@pytest.fixture
def on_redis(redis_db, tmp_path):
    """Settings for a gateway on a fresh Redis database (the storage folder still holds the generated secrets)."""
    (tmp_path / "storage").mkdir(exist_ok=True)
    return {"SESSION_STORE": "redis", "REDIS_URL": redis_db[0]}


def enrol(server, admin, tabs) -> None:
    """Register one session per tab in pool "team", through the served gateway's API."""
    for name, ids, tab in (("tab-one", A, tabs[0]), ("tab-two", B, tabs[1])):
        body = {"domain": "lmarena.ai", "session_name": name, "session_id": ids[0], "message_id": ids[1]}
        body.update(bridge_base_url=tab.url, pool="team")
        response = requests.post(server.url + "/session/register", json=body, headers=admin, timeout=10)
        assert response.status_code == 201, response.text


def ask(client: openai.OpenAI, stream: bool) -> str:
    """Send one pool request with the official client; return the answer's text (a refusal raises)."""
    create = client.chat.completions.with_raw_response.create
    raw = create(model="gpt-5", messages=HI, stream=stream, extra_headers=POOL)
    assert raw.status_code == 200
    answer = raw.parse()
    if not stream:
        return answer.choices[0].message.content
    return "".join(chunk.choices[0].delta.content or "" for chunk in answer if chunk.choices)


def shared_record(redis_client, url: str) -> dict:
    """Return a bridge's breaker record as every instance on this Redis reads it."""
    raw = redis_client.get("lmgw:provider:" + bridge_key(url))
    return json.loads(raw) if raw else {}


def test_redis_pool_spreads_requests_over_both_members(serve, on_redis, redis_db, openai_for, tabs, bridge, admin):
    server = serve(**on_redis)
    enrol(server, admin, tabs)
    client = openai_for(server)
    answers = [ask(client, stream=n % 2 == 1) for n in range(8)]
    assert sorted(answers) == ["from tab one"] * 4 + ["from tab two"] * 4
    stored = json.loads(redis_db[1].hget("lmgw:session:lmarena.ai:tab-one", "record"))
    assert (stored["pool"], stored["bridge_base_url"]) == ("team", tabs[0].url)
    assert [len(chats(t)) for t in tabs] == [4, 4] and chats(bridge) == []


@pytest.mark.slow  # two served instances and a wait for the breaker's read cache
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_redis_pool_member_paused_by_one_instance_is_skipped_by_another(
    serve, on_redis, redis_db, openai_for, tabs, admin, fault, stream
):
    first, second = serve(**on_redis), serve(**on_redis)  # two gateway instances on one Redis
    enrol(first, admin, tabs)
    one, _ = tabs
    first_client, second_client = openai_for(first), openai_for(second)
    assert {ask(second_client, stream) for _ in range(2)} == {"from tab one", "from tab two"}  # both know the pool
    for name, value in fault.items():
        setattr(one, name, value)
    asked = len(chats(one))
    for _ in range(6):
        assert ask(first_client, stream) == "from tab two"
    assert len(chats(one)) == asked + 1  # paused after its one failure
    record = shared_record(redis_db[1], one.url)
    assert 50 < record["cooldown_until"] - time.time() <= 60
    assert record.get("errors", 0) == 0  # the session's trouble, not the bridge's: its circuit counts nothing
    # The tab recovers, but the other instance must not find out by asking it: the pause holds there too.
    one.no_browser, one.marker = False, ""
    time.sleep(RedisState.CACHE_SECONDS + 0.05)  # the second instance's cached read of the record has expired
    assert 50 < second.app.extensions["router"].breaker.cooldown_left(bridge_key(one.url)) <= 60
    for _ in range(4):
        assert ask(second_client, stream) == "from tab two"
    assert len(chats(one)) == asked + 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_redis_pool_with_every_member_out_is_one_429_with_retry_after(
    serve, on_redis, redis_db, openai_for, tabs, admin, stream
):
    server = serve(**on_redis, GATEWAY_POOL_COOLDOWN_SECONDS=40)
    enrol(server, admin, tabs)
    one, two = tabs
    one.no_browser, two.marker = True, "error"
    client = openai_for(server)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as refused:
            ask(client, stream)
        response = refused.value.response
        assert response.json()["error"]["code"] == "pool_exhausted"
        assert 35 <= int(response.headers["Retry-After"]) <= 40
        assert [len(chats(t)) for t in tabs] == [1, 1]  # the second time, no bridge is asked
    assert all(shared_record(redis_db[1], t.url)["cooldown_until"] > time.time() + 35 for t in tabs)
