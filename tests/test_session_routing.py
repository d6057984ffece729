"""/v1 requests routed by X-Session-Name + X-Target-Domain to the session's ids, bridge and models."""

from __future__ import annotations

import json

import openai
import pytest

from app.session_rules import is_lmarena_id
from tests.upstreams.fake_bridge import FakeBridge

A_SID, A_MID = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
C_SID, C_MID = "33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444"
HI = [{"role": "user", "content": "hi"}]


def register(client, admin, **fields):
    response = client.post("/session/register", json=fields, headers=admin)
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()["session"]


@pytest.fixture
def sessions(client, admin):
    register(client, admin, domain="lmarena.ai", session_name="team", session_id=A_SID, message_id=A_MID)
    register(client, admin, domain="canary.lmarena.ai", session_name="team", session_id=C_SID, message_id=C_MID)


def _headers(name, domain=None):
    headers = {"X-Session-Name": name}
    if domain:
        headers["X-Target-Domain"] = domain
    return headers


def test_session_ids_are_forwarded_per_domain(sessions, openai_client, bridge):
    openai_client.chat.completions.create(model="gpt-5", messages=HI, extra_headers=_headers("team", "lmarena.ai"))
    assert (bridge.requests[-1].json["session_id"], bridge.requests[-1].json["message_id"]) == (A_SID, A_MID)
    openai_client.chat.completions.create(
        model="gpt-5", messages=HI, extra_headers=_headers("team", "canary.lmarena.ai")
    )
    assert (bridge.requests[-1].json["session_id"], bridge.requests[-1].json["message_id"]) == (C_SID, C_MID)


def test_domain_defaults_to_lmarena_ai(sessions, openai_client, bridge):
    openai_client.chat.completions.create(model="gpt-5", messages=HI, extra_headers=_headers("team"))
    assert bridge.requests[-1].json["session_id"] == A_SID


def test_no_session_headers_forwards_no_ids(sessions, openai_client, bridge):
    openai_client.chat.completions.create(model="gpt-5", messages=HI)
    assert "session_id" not in bridge.requests[-1].json


def test_streamed_chat_through_session(sessions, openai_client, bridge):
    stream = openai_client.chat.completions.create(
        model="gpt-5", messages=HI, stream=True, extra_headers=_headers("team", "canary.lmarena.ai")
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from the real bridge"
    assert bridge.requests[-1].json["session_id"] == C_SID


def test_session_with_own_bridge_goes_there(client, admin, openai_client, bridge):
    with FakeBridge(api_key="sk-lmab-test", chunk_delay=0.01, reply="from the second bridge") as second:
        register(
            client,
            admin,
            domain="beta.lmarena.ai",
            session_name="own",
            session_id=A_SID,
            message_id=A_MID,
            bridge_base_url=second.url,
        )
        before = len(bridge.requests)
        reply = openai_client.chat.completions.create(
            model="gpt-5", messages=HI, extra_headers=_headers("own", "beta.lmarena.ai")
        )
        assert reply.choices[0].message.content == "from the second bridge"
        assert second.requests[-1].json["session_id"] == A_SID
        assert len(bridge.requests) == before


def test_unknown_session_is_openai_404(sessions, openai_client, bridge):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(model="gpt-5", messages=HI, extra_headers=_headers("ghost", "lmarena.ai"))
    assert caught.value.body["code"] == "session_not_found"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.list(extra_headers=_headers("ghost"))
    assert [r for r in bridge.requests if r.path == "/v1/chat/completions"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Target-Domain": "lmarena.ai"},
        {"X-Session-Name": "../etc"},
        {"X-Session-Name": "team", "X-Target-Domain": "evil.com"},
    ],
)
def test_bad_session_headers_are_400(sessions, client, auth, bridge, headers):
    response = client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": HI}, headers={**auth, **headers})
    assert response.status_code == 400
    assert bridge.requests == []


def test_session_models_map_lists_and_limits_models(client, admin, openai_client, bridge):
    register(
        client,
        admin,
        domain="lmarena.ai",
        session_name="mapped",
        session_id=A_SID,
        message_id=A_MID,
        models={"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086", "nano-banana": "null:image"},
    )
    listed = [m.id for m in openai_client.models.list(extra_headers=_headers("mapped"))]
    assert listed == ["gpt-5", "nano-banana"]
    openai_client.chat.completions.create(model="gpt-5", messages=HI, extra_headers=_headers("mapped"))
    assert bridge.requests[-1].json["target_model_id"] == "983bc566-b783-4d28-b24c-3c8b08eb1086"
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(model="gemini-2.5-pro", messages=HI, extra_headers=_headers("mapped"))
    assert "gpt-5" in caught.value.message


def test_images_through_session_forward_its_ids(sessions, openai_client, bridge):
    openai_client.images.generate(model="nano-banana", prompt="a cat", extra_headers=_headers("team", "lmarena.ai"))
    assert bridge.requests[-1].json["session_id"] == A_SID


GPT5_ID = "983bc566-b783-4d28-b24c-3c8b08eb1086"


@pytest.fixture
def aliased(client, admin):
    """Session "aliased": two client names for bridge models, one LMArena id kept from a models.json-style map."""
    register(
        client,
        admin,
        domain="lmarena.ai",
        session_name="aliased",
        session_id=A_SID,
        message_id=A_MID,
        models={"my-gpt": "gpt-5", "my-pic": "nano-banana", "gpt-5": GPT5_ID},
    )


def _chats(bridge):
    return [r.json for r in bridge.requests if r.path == "/v1/chat/completions"]


def test_session_alias_sends_bridge_name_and_reports_client_name(aliased, openai_client, bridge, client, admin):
    reply = openai_client.chat.completions.create(model="my-gpt", messages=HI, extra_headers=_headers("aliased"))
    assert reply.model == "my-gpt"
    assert reply.choices[0].message.content == "Hello from the real bridge"
    sent = _chats(bridge)[-1]
    assert sent["model"] == "gpt-5" and "target_model_id" not in sent
    assert (sent["session_id"], sent["message_id"]) == (A_SID, A_MID)
    summary = client.get("/analytics/summary?window=1h", headers=admin).get_json()["data"]
    assert {row["model"] for row in summary} == {"my-gpt"}


def test_session_alias_in_every_stream_chunk(aliased, openai_client, bridge):
    chunks = list(
        openai_client.chat.completions.create(
            model="my-gpt",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=_headers("aliased"),
        )
    )
    assert len(chunks) > 3 and {c.model for c in chunks} == {"my-gpt"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the real bridge"
    assert _chats(bridge)[-1]["model"] == "gpt-5"


def test_session_alias_in_raw_json_and_sse(aliased, client, auth, bridge):
    headers = {**auth, **_headers("aliased")}
    answer = client.post("/v1/chat/completions", json={"model": "my-gpt", "messages": HI}, headers=headers)
    assert answer.get_json()["model"] == "my-gpt"
    streamed = client.post(
        "/v1/chat/completions", json={"model": "my-gpt", "messages": HI, "stream": True}, headers=headers
    ).get_data(as_text=True)
    frames = [line[6:] for line in streamed.splitlines() if line.startswith("data: {")]
    assert frames and all(json.loads(frame)["model"] == "my-gpt" for frame in frames)
    assert "gpt-5" not in streamed
    assert [sent["model"] for sent in _chats(bridge)] == ["gpt-5", "gpt-5"]


def test_session_map_uuid_value_keeps_target_model_id_and_name(aliased, openai_client, bridge):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=HI, extra_headers=_headers("aliased"))
    assert reply.model == "gpt-5"
    sent = _chats(bridge)[-1]
    assert (sent["model"], sent["target_model_id"]) == ("gpt-5", GPT5_ID)


def test_session_map_refuses_names_it_lacks_even_bridge_names(aliased, openai_client, bridge):
    for model in ("gemini-2.5-pro", "nano-banana"):  # a bridge model, and a value of the map that is no key
        with pytest.raises(openai.NotFoundError) as caught:
            openai_client.chat.completions.create(model=model, messages=HI, extra_headers=_headers("aliased"))
        assert caught.value.body["code"] == "model_not_found"
        assert "my-gpt" in caught.value.message
    assert _chats(bridge) == []


def test_session_models_list_is_the_map_keys(aliased, openai_client):
    listed = openai_client.models.list(extra_headers=_headers("aliased"))
    assert [m.id for m in listed] == ["my-gpt", "my-pic", "gpt-5"]
    assert {m.object for m in listed} == {"model"}
    assert openai_client.models.retrieve("my-pic", extra_headers=_headers("aliased")).id == "my-pic"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("nano-banana", extra_headers=_headers("aliased"))


def test_session_map_wins_over_global_aliases(make_app, bridge, auth, admin):
    client = make_app(GATEWAY_MODEL_ALIASES="my-gpt=gemini-2.5-pro,other=gemini-2.5-pro").test_client()
    register(
        client,
        admin,
        domain="lmarena.ai",
        session_name="mapped",
        session_id=A_SID,
        message_id=A_MID,
        models={"my-gpt": "gpt-5"},
    )
    register(client, admin, domain="lmarena.ai", session_name="plain", session_id=C_SID, message_id=C_MID)
    headers = {**auth, **_headers("mapped")}
    assert (
        client.post("/v1/chat/completions", json={"model": "my-gpt", "messages": HI}, headers=headers).status_code
        == 200
    )
    assert _chats(bridge)[-1]["model"] == "gpt-5"
    refused = client.post("/v1/chat/completions", json={"model": "other", "messages": HI}, headers=headers)
    assert refused.status_code == 404
    # A session without a map takes the global aliases.
    plain = {**auth, **_headers("plain")}
    answer = client.post("/v1/chat/completions", json={"model": "other", "messages": HI}, headers=plain).get_json()
    assert answer["model"] == "other"
    assert (_chats(bridge)[-1]["model"], _chats(bridge)[-1]["session_id"]) == ("gemini-2.5-pro", C_SID)


def test_images_through_session_alias(aliased, openai_client, bridge):
    result = openai_client.images.generate(model="my-pic", prompt="a cat", extra_headers=_headers("aliased"))
    assert result.data[0].url.endswith("fake-image-0001.png")
    sent = _chats(bridge)[-1]
    assert sent["model"] == "nano-banana" and "target_model_id" not in sent
    with pytest.raises(openai.NotFoundError):
        openai_client.images.generate(model="nano-banana", prompt="a cat", extra_headers=_headers("aliased"))


@pytest.mark.parametrize(
    ("value", "is_id"),
    [
        (GPT5_ID, True),
        (GPT5_ID.upper() + ":image", True),
        ("null:image", True),
        ("null", True),
        ("gpt-5", False),
        ("nano-banana", False),
        (GPT5_ID + "-x", False),
        ("nullx", False),
    ],
)
def test_is_lmarena_id_tells_ids_from_bridge_names(value, is_id):
    assert is_lmarena_id(value) is is_id


def test_session_bridge_gets_its_own_key_and_the_default_bridge_keeps_the_setting(client, admin, openai_client, bridge):
    with FakeBridge(api_key="sk-own-bridge", chunk_delay=0.01, reply="from the second bridge") as second:
        shown = register(
            client,
            admin,
            domain="lmarena.ai",
            session_name="own",
            session_id=A_SID,
            message_id=A_MID,
            bridge_base_url=second.url,
            bridge_api_key="sk-own-bridge",
        )
        assert shown["bridge_api_key_set"] is True and "sk-own-bridge" not in str(shown)
        before = len(bridge.requests)
        reply = openai_client.chat.completions.create(model="gpt-5", messages=HI, extra_headers=_headers("own"))
        assert reply.choices[0].message.content == "from the second bridge"
        stream = openai_client.chat.completions.create(
            model="gpt-5", messages=HI, stream=True, extra_headers=_headers("own")
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "from the second bridge"
        openai_client.images.generate(model="nano-banana", prompt="a cat", extra_headers=_headers("own"))
        chats = [r for r in second.requests if r.path == "/v1/chat/completions"]
        assert [r.headers["authorization"] for r in chats] == ["Bearer sk-own-bridge"] * 3
        assert len(bridge.requests) == before
        openai_client.chat.completions.create(model="gpt-5", messages=HI)
        assert bridge.requests[-1].headers["authorization"] == "Bearer sk-lmab-test"  # LMARENA_BRIDGE_API_KEY


def test_sessions_sharing_a_bridge_url_never_share_keys(client, admin, auth, bridge):
    with FakeBridge(api_key="sk-right", chunk_delay=0.01) as second:
        for name, key in (("right", "sk-right"), ("wrong", "sk-wrong"), ("keyless", None)):
            fields = {"bridge_api_key": key} if key else {}
            register(client, admin, domain="lmarena.ai", session_name=name, session_id=A_SID, message_id=A_MID,
                     bridge_base_url=second.url, **fields)  # fmt: skip

        def chat(name):
            body = {"model": "gpt-5", "messages": HI}
            return client.post("/v1/chat/completions", json=body, headers={**auth, **_headers(name)})

        assert chat("right").status_code == 200
        refused = chat("wrong")
        assert refused.status_code == 502
        error = refused.get_json()["error"]
        assert error["code"] == "upstream_auth_failed"
        assert "session's bridge_api_key" in error["message"] and "LMARENA_BRIDGE_API_KEY" not in error["message"]
        assert "sk-wrong" not in refused.get_data(as_text=True)
        assert chat("right").status_code == 200
        # No key of its own: the setting's key, as for any bridge; this bridge refuses it and says which key.
        keyless = chat("keyless")
        assert keyless.status_code == 502 and "LMARENA_BRIDGE_API_KEY" in keyless.get_json()["error"]["message"]
        sent = [r.headers["authorization"] for r in second.requests if r.path == "/v1/chat/completions"]
        assert sent == ["Bearer sk-right", "Bearer sk-wrong", "Bearer sk-right", "Bearer sk-lmab-test"]
