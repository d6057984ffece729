"""/v1 requests routed by X-Session-Name + X-Target-Domain to the session's ids, bridge and models."""

from __future__ import annotations

import openai
import pytest

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
