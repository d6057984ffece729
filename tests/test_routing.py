"""Two providers: X-Provider, routing by model, retries, fallback, time budget and the shared circuit breaker."""

from __future__ import annotations

import json
import re
import time

import openai
import pytest

from tests.upstreams.script import Delay, Refuse, Stall, Status

HI = [{"role": "user", "content": "hi"}]
CLAUDE = "Claude Sonnet 4\n☀️ | 🆕"


def chats(fake) -> list:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


def served(fake) -> list:
    """Return which scripted step answered each chat request (None: the normal answer)."""
    return [r.served for r in chats(fake)]


@pytest.fixture
def gateway(serve, with_yupp):
    """Serve a gateway with both providers; keyword overrides go to settings."""

    def start(**overrides):
        return serve(**{**with_yupp, **overrides})

    return start


@pytest.fixture
def client(gateway, openai_for):
    return openai_for(gateway())


def test_auto_routes_by_model(client, bridge, yupp):
    client.chat.completions.create(model="gpt-5", messages=HI)
    assert len(chats(bridge)) == 1 and chats(yupp) == []
    reply = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=HI)
    assert reply.headers["X-Gateway-Provider"] == "yupp2api"
    completion = reply.parse()
    assert completion.model == CLAUDE
    assert completion.choices[0].message.content == "Hello from the real yupp"
    assert chats(yupp)[-1].json["model"] == CLAUDE  # newline and emoji intact on the wire


def test_stream_from_yupp_reports_requested_model_id(client, yupp):
    chunks = list(client.chat.completions.create(model=CLAUDE, messages=HI, stream=True))
    assert {c.model for c in chunks} == {CLAUDE}  # yupp2Api itself says "Claude Sonnet 4"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the real yupp"
    assert chats(yupp)[-1].json["stream"] is True


def test_unknown_model_is_404_when_every_list_is_known(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert caught.value.body["code"] == "model_not_found"


def test_models_are_merged_with_owner_and_exact_ids(client):
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models["gpt-5"] == "lmarena_bridge"
    assert models[CLAUDE] == "yupp2api"
    assert models["DeepSeek R1\n🧠"] == "yupp2api"
    yupp_only = client.models.list(extra_headers={"X-Provider": "yupp2api"})
    assert {m.owned_by for m in yupp_only} == {"yupp2api"}


def test_models_deduplicate_first_provider_wins(gateway, openai_for, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    ids = [m.id for m in openai_for(gateway()).models.list()]
    assert ids.count("gpt-5") == 1


@pytest.mark.parametrize(
    ("selector", "served_by"),
    [("bridge_direct", "lmarena_bridge"), ("yupp2api", "yupp2api"), ("AUTO", "lmarena_bridge")],
)
def test_explicit_x_provider_wins(client, bridge, yupp, selector, served_by):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-5", messages=HI, extra_headers={"X-Provider": selector}
    )
    assert reply.headers["X-Gateway-Provider"] == served_by


def test_unknown_x_provider_is_400_listing_valid_ones(client, bridge, yupp):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-5", messages=HI, extra_headers={"X-Provider": "openrouter"})
    assert "auto, bridge_direct, yupp2api" in caught.value.message
    assert chats(bridge) == [] and chats(yupp) == []


def test_disabled_provider_is_400(live, openai_for):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_for(live).chat.completions.create(model="gpt-5", messages=HI, extra_headers={"X-Provider": "yupp2api"})
    assert caught.value.body["code"] == "provider_disabled"


def test_routing_table_orders_providers(gateway, openai_for, bridge, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    client = openai_for(gateway(GATEWAY_MODEL_ROUTES=json.dumps({"gpt-5": ["yupp2api", "bridge_direct"]})))
    reply = client.chat.completions.with_raw_response.create(model="gpt-5", messages=HI)
    assert reply.headers["X-Gateway-Provider"] == "yupp2api"


def test_503_then_success_is_retried(client, yupp):
    yupp.script(Status(503), Status(503))
    reply = client.chat.completions.with_raw_response.create(model=CLAUDE, messages=HI)
    assert reply.parse().choices[0].message.content == "Hello from the real yupp"
    assert served(yupp) == ["status:503", "status:503", None]
    assert reply.headers["X-Gateway-Attempts"] == "3"


@pytest.mark.slow  # waits out Retry-After: 1
def test_retry_after_is_honoured(gateway, openai_for, yupp):
    client = openai_for(gateway(GATEWAY_RETRY_AFTER_CAP=5))
    yupp.script(Status(429, retry_after=1))
    started = time.monotonic()
    client.chat.completions.create(model=CLAUDE, messages=HI)
    assert time.monotonic() - started >= 0.95
    first, second = chats(yupp)
    assert second.received_at - first.received_at >= 0.95


def test_retry_after_beyond_the_cap_falls_back_at_once(client, bridge, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    yupp.script(Status(429, retry_after=60))
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-5", messages=HI, extra_headers={"X-Provider": "auto"}
    )
    assert reply.headers["X-Gateway-Provider"] in ("lmarena_bridge", "yupp2api")


def test_exhausted_retries_fall_back_in_order(gateway, openai_for, bridge, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    client = openai_for(gateway(GATEWAY_MODEL_ROUTES=json.dumps({"gpt-5": ["yupp2api", "bridge_direct"]})))
    yupp.script(Status(502), Status(503), Status(504))
    reply = client.chat.completions.with_raw_response.create(model="gpt-5", messages=HI)
    assert reply.headers["X-Gateway-Provider"] == "lmarena_bridge"
    assert served(yupp) == ["status:502", "status:503", "status:504"]  # YUPP2API_MAX_RETRIES=2
    assert len(chats(bridge)) == 1
    assert reply.headers["X-Gateway-Attempts"] == "4"


def test_client_errors_are_neither_retried_nor_passed_on(client, bridge, yupp):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "x [[fake:badrequest]]"}])
    assert "Invalid model selection" in caught.value.message
    assert len(chats(yupp)) == 1 and chats(bridge) == []


def test_refused_port_is_retried_then_502_with_clean_error(gateway, openai_for, yupp):
    client = openai_for(gateway())
    yupp.stop()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=CLAUDE, messages=HI, extra_headers={"X-Provider": "yupp2api"})
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_unreachable"
    assert caught.value.response.headers["X-Request-Id"]


def test_refused_connection_mid_request_is_retried(client, yupp):
    yupp.script(Refuse())
    assert client.chat.completions.create(model=CLAUDE, messages=HI).choices[0].message.content
    assert served(yupp) == ["refuse", None]


def test_slow_first_byte_times_out_and_is_retried(gateway, openai_for, yupp):
    client = openai_for(gateway(YUPP2API_TIMEOUT=0.5))
    yupp.script(Delay(3))
    started = time.monotonic()
    assert client.chat.completions.create(model=CLAUDE, messages=HI).choices[0].message.content
    assert time.monotonic() - started < 2
    assert served(yupp) == ["delay", None]


def test_stream_failure_before_content_is_retried_invisibly(gateway, openai_for, yupp):
    client = openai_for(gateway(YUPP2API_TIMEOUT=0.5))
    yupp.script(Stall(after_chunks=1, seconds=3))  # the role chunk, then silence
    chunks = list(client.chat.completions.create(model=CLAUDE, messages=HI, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the real yupp"
    assert [c.choices[0].delta.role for c in chunks if c.choices].count("assistant") == 1
    assert served(yupp) == ["stall", None]


def test_stream_never_retried_after_first_content(client, yupp):
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model=CLAUDE, messages=[{"role": "user", "content": "hi [[fake:midfail]]"}], stream=True
        ):
            received.extend(c.delta.content for c in chunk.choices if c.delta.content)
    assert "".join(received) == "Hello from"
    assert "Response ended prematurely" in caught.value.message
    assert len(chats(yupp)) == 1


def test_stream_stall_after_content_ends_with_idle_error(gateway, openai_for, yupp):
    client = openai_for(gateway(YUPP2API_IDLE_TIMEOUT=0.5))
    yupp.script(Stall(after_chunks=3, seconds=5))
    with pytest.raises(openai.APIError) as caught:
        list(client.chat.completions.create(model=CLAUDE, messages=HI, stream=True))
    assert caught.value.body["code"] == "upstream_idle_timeout"
    assert len(chats(yupp)) == 1


def test_stream_garbage_is_retried_then_clean_502(client, yupp):
    with pytest.raises(openai.APIStatusError) as caught:
        list(
            client.chat.completions.create(
                model=CLAUDE,
                messages=[{"role": "user", "content": "[[fake:garbage]]"}],
                stream=True,
                extra_headers={"X-Provider": "yupp2api"},
            )
        )
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_bad_stream"
    assert len(chats(yupp)) == 3


def test_stream_falls_back_before_first_byte(gateway, openai_for, bridge, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    client = openai_for(gateway(GATEWAY_MODEL_ROUTES=json.dumps({"gpt-5": ["yupp2api", "bridge_direct"]})))
    yupp.script(Status(503), Status(503), Status(503))
    raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=HI, stream=True)
    assert raw.headers["X-Gateway-Provider"] == "lmarena_bridge"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "Hello from the real bridge"


@pytest.mark.slow  # runs the 1 s budget out
def test_request_budget_bounds_all_attempts(gateway, openai_for, yupp):
    client = openai_for(gateway(GATEWAY_REQUEST_BUDGET_SECONDS=1, YUPP2API_TIMEOUT=10))
    yupp.script(Delay(5))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=CLAUDE, messages=HI, extra_headers={"X-Provider": "yupp2api"})
    assert time.monotonic() - started < 2
    assert caught.value.status_code == 504


def test_yupp_cooldown_is_not_retried(client, yupp):
    yupp.script(Status(503, body={"detail": "No valid Yupp.ai accounts available."}))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=CLAUDE, messages=HI)
    assert caught.value.body["code"] == "upstream_cooldown"
    assert len(chats(yupp)) == 1


def test_wrong_yupp_key_is_502_and_not_retried(gateway, openai_for, yupp):
    client = openai_for(gateway(YUPP2API_API_KEY="wrong"))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=CLAUDE, messages=HI, extra_headers={"X-Provider": "yupp2api"})
    assert caught.value.status_code == 502
    assert "YUPP2API_API_KEY" in caught.value.message
    assert len(chats(yupp)) == 1


def test_model_ids_are_built_once_until_a_list_changes(make_app, with_yupp, yupp, bridge, tmp_path):
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"from-file": "00000000-0000-0000-0000-000000000001"}))
    app = make_app(**with_yupp, LMARENA_BRIDGE_MODELS_FILE=str(models_file))
    bridge_provider, yupp_provider = app.extensions["router"].providers
    first = bridge_provider.known_models()
    assert first and {"gpt-5", "from-file"} <= first
    assert bridge_provider.known_models() is first  # the same set: nothing rebuilt per request
    assert yupp_provider.known_models() is yupp_provider.known_models()

    # The bridge lists a new model and the cached list is refreshed: routing sees it.
    bridge.models["new-model"] = "00000000-0000-0000-0000-000000000002"
    bridge_provider._remote_models._refresh()
    assert "new-model" in bridge_provider.known_models()

    # models.json is edited (a new size and mtime) and its throttled check is due: routing sees that too.
    models_file.write_text(json.dumps({"edited-in-file": "00000000-0000-0000-0000-000000000003"}))
    bridge_provider.files._models._next_check = 0.0
    after_edit = bridge_provider.known_models()
    assert "edited-in-file" in after_edit and "from-file" not in after_edit


@pytest.mark.slow  # two first-byte timeouts of 0.5 s
@pytest.mark.parametrize("stream", [False, True])
def test_a_silent_bridge_is_never_asked_twice_and_the_fallback_serves(gateway, openai_for, bridge, yupp, stream):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    client = openai_for(
        gateway(
            LMARENA_BRIDGE_TIMEOUT=0.5,
            LMARENA_BRIDGE_MAX_RETRIES=2,
            GATEWAY_MODEL_ROUTES=json.dumps({"gpt-5": ["bridge_direct", "yupp2api"]}),
        )
    )
    bridge.headers_delay = 3  # the tab may still be generating when the gateway gives up on it
    raw = client.chat.completions.with_raw_response.create(model="gpt-5", messages=HI, stream=stream)
    assert raw.headers["X-Gateway-Provider"] == "yupp2api"
    assert len(chats(bridge)) == 1 and len(chats(yupp)) == 1


@pytest.mark.slow  # runs a 1.5 s budget out
def test_a_spent_budget_says_how_long_it_waited(gateway, openai_for, bridge, yupp):
    yupp.models = {**yupp.models, "gpt-5": "OpenAI"}
    client = openai_for(
        gateway(
            GATEWAY_REQUEST_BUDGET_SECONDS=1.5,
            LMARENA_BRIDGE_TIMEOUT=1,
            GATEWAY_MODEL_ROUTES=json.dumps({"gpt-5": ["bridge_direct", "yupp2api"]}),
        )
    )
    bridge.headers_delay = 3
    yupp.script(Delay(3))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-5", messages=HI)
    assert caught.value.status_code == 504 and caught.value.body["code"] == "request_budget_exceeded"
    # The bridge's 1 s, then what was left for yupp2Api (LMARENA_BRIDGE_MAX_RETRIES=1: never spent on the bridge).
    assert re.search(r"waited 1\.[5-9] s over 2 attempts", caught.value.message), caught.value.message
    assert len(chats(bridge)) == 1 and len(chats(yupp)) == 1
