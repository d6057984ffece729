"""Chat completions through the gateway with the official OpenAI client, against the loopback fake bridge."""

from __future__ import annotations

import time

import openai
import pytest


def test_chat_nonstream_returns_completion(openai_client, bridge):
    completion = openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-5"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello from the real bridge"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    forwarded = bridge.requests[-1]
    assert forwarded.path == "/v1/chat/completions"
    assert forwarded.json["stream"] is False
    assert forwarded.headers["authorization"] == "Bearer sk-lmab-test"


def test_chat_stream_arrives_incrementally(openai_client, bridge):
    bridge.chunk_delay = 0.15
    arrivals, pieces = [], []
    stream = openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "Say hello"}], stream=True
    )
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == "Hello from the real bridge"
    assert bridge.requests[-1].json["stream"] is True
    # Five content chunks 0.15 s apart upstream: a relay that buffered would deliver them all at once.
    content_span = arrivals[-1] - arrivals[1]
    assert content_span >= 0.5, f"chunks arrived together ({content_span:.3f}s apart): the stream was buffered"


def test_chat_stream_starts_with_role_and_ends_with_stop(openai_client):
    chunks = list(
        openai_client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.model == "gpt-5" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_include_usage_sends_final_usage_chunk(openai_client):
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-5",
            messages=[{"role": "user", "content": "Say hello to the gateway"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == len("Hello from the real bridge") // 4 + 1
    assert last.usage.prompt_tokens == len("Say hello to the gateway") // 4
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_include_usage_has_no_usage_chunk(openai_client):
    chunks = list(
        openai_client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert all(c.choices for c in chunks)


def test_chat_accepts_list_of_parts_content(openai_client, bridge):
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    completion = openai_client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == "Hello from the real bridge"
    assert bridge.requests[-1].json["messages"][0]["content"] == content


def test_chat_unknown_fields_are_forwarded(openai_client, bridge):
    openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], temperature=0.3, extra_body={"top_k": 5}
    )
    assert bridge.requests[-1].json["top_k"] == 5
    assert bridge.requests[-1].json["temperature"] == 0.3


@pytest.mark.parametrize(
    ("marker", "status", "code", "text"),
    [
        ("[[fake:error]]", 429, "rate_limit_exceeded", "rate-limiting"),
        ("[[fake:cloudflare]]", 503, "upstream_verification", "human (Cloudflare) check"),
        ("[[fake:disconnect]]", 502, "bridge_error", "Browser disconnected during operation"),
        ("[[fake:hang]]", 504, "upstream_timeout", "did not answer in time"),
        ("[[fake:toolarge]]", 413, "attachment_too_large", "size limit"),
    ],
)
def test_chat_nonstream_bridge_errors_become_openai_errors(openai_client, marker, status, code, text):
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": f"hi {marker}"}])
    assert caught.value.status_code == status
    assert caught.value.body["code"] == code
    assert text in caught.value.message


@pytest.mark.parametrize(
    ("marker", "code", "text"),
    [
        ("[[fake:error]]", "rate_limit_exceeded", "rate-limiting"),
        ("[[fake:midfail]]", "bridge_error", "network error"),
        ("[[fake:hang]]", "upstream_timeout", "did not answer in time"),
    ],
)
def test_chat_stream_inband_bridge_error_raises_in_client(openai_client, marker, code, text):
    received = []
    with pytest.raises(openai.APIError) as caught:
        stream = openai_client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": f"hi {marker}"}], stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert caught.value.body["code"] == code
    assert text in caught.value.message
    # The bridge's error text is never shown as if the model had said it.
    assert not any("LMArena Bridge Error" in piece for piece in received)


def test_chat_stream_midfail_keeps_text_sent_before_the_error(openai_client):
    received = []
    with pytest.raises(openai.APIError):
        for chunk in openai_client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "hi [[fake:midfail]]"}], stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "Hello from"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_no_browser_is_503_with_english_message(openai_client, bridge, stream):
    bridge.no_browser = True
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "bridge_no_browser"
    assert "no browser connected" in caught.value.message


def test_chat_waiting_for_refresh_is_503_with_retry_after(openai_client, bridge):
    bridge.waiting_for_refresh = True
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    # The bridge says "a few seconds", but the outcome table pauses the tab for GATEWAY_POOL_COOLDOWN_SECONDS (60).
    assert caught.value.response.headers["Retry-After"] == "60"


def test_chat_wrong_bridge_key_is_502_not_401(serve, openai_for):
    client = openai_for(serve(LMARENA_BRIDGE_API_KEY="wrong"))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert "LMARENA_BRIDGE_API_KEY" in caught.value.message


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_chat_upstream_5xx_maps_to_gateway_5xx(openai_client, status):
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": f"hi [[fake:status:{status}]]"}]
        )
    assert caught.value.status_code == {500: 502, 502: 502, 503: 503, 504: 504}[status]
    assert f"fake status {status}" in caught.value.message


def test_chat_refused_port_is_502(serve, openai_for):
    client = openai_for(serve(LMARENA_BRIDGE_BASE_URL="http://127.0.0.1:9"))
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=stream)
        assert caught.value.status_code == 502
        assert caught.value.body["code"] == "upstream_unreachable"
        assert "connection refused" in caught.value.message


def test_chat_bad_client_key_is_401(live, openai_for):
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_for(live, api_key="wrong").chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["code"] == "invalid_api_key"
