"""`stop`, `max_tokens` and `max_completion_tokens` enforced by the gateway, which the bridge ignores."""

from __future__ import annotations

import pytest

from app.usage import CHARS_PER_TOKEN
from tests.helpers.sseclient_raw import stream_chat

SAY_HELLO = [{"role": "user", "content": "Say hello"}]  # the fake bridge answers "Hello from the real bridge"
LONG = " ".join(f"word{i}" for i in range(100))  # 100 chunks of the fake's browser: seconds at its pace


def streamed(openai_client, **kwargs) -> tuple[str, str | None, list]:
    """Return (text, finish_reason, chunks) of a streamed answer."""
    chunks = list(openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(reasons) <= 1, reasons
    return text, (reasons[0] if reasons else None), chunks


@pytest.mark.parametrize("stop", [" the", [" the", "real"], ["XYZ", " the"]])
def test_stop_cuts_a_json_answer(openai_client, stop):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, stop=stop)
    assert reply.choices[0].message.content == "Hello from"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == -(-len("Hello from") // CHARS_PER_TOKEN)


def test_stop_split_across_chunks_cuts_a_stream(openai_client):
    # The fake's browser sends "Hello", " from", " the", " real", " bridge": the stop spans three of them.
    text, reason, _ = streamed(openai_client, stop=["om the re"])
    assert (text, reason) == ("Hello fr", "stop")


def test_stop_that_never_completes_releases_what_was_held(openai_client):
    # " bridge" could begin " bridges": it is held until the answer ends, then goes out.
    text, reason, _ = streamed(openai_client, stop=" bridges")
    assert (text, reason) == ("Hello from the real bridge", "stop")


def test_stop_ends_the_generation_instead_of_reading_it(serve, bridge, openai_for):
    bridge.reply = LONG
    client = openai_for(serve())
    text, reason, _ = streamed(client, stop="word3 ")
    assert (text, reason) == ("word0 word1 word2 ", "stop")
    # The gateway hung up on the bridge while its browser still had 96 words to send.
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=5), "the upstream was read to its end"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_a_json_answer_with_length(openai_client, field):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, **{field: 3})
    assert reply.choices[0].message.content == "Hello from t"  # 3 tokens of 4 characters, as usage counts them
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_max_tokens_cuts_a_stream_with_length_and_counts_usage(openai_client):
    text, reason, chunks = streamed(openai_client, max_tokens=2, stream_options={"include_usage": True})
    assert (text, reason) == ("Hello fr", "length")
    assert chunks[-1].usage.completion_tokens == 2


def test_max_tokens_larger_than_the_answer_changes_nothing(openai_client):
    text, reason, _ = streamed(openai_client, max_tokens=1000, stop="never said")
    assert (text, reason) == ("Hello from the real bridge", "stop")


def test_max_tokens_and_stop_whichever_comes_first(openai_client):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, max_tokens=2, stop=" the")
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Hello fr", "length")
    reply = openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, max_tokens=3, stop=" from")
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Hello", "stop")


def test_shaped_stream_keeps_openai_framing(live, auth):
    body = {"model": "gpt-5", "messages": SAY_HELLO, "stream": True, "stop": " real"}
    result = stream_chat(live.url, body, auth)
    frames = result.json_frames()
    assert result.data[-1] == "[DONE]"
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(f["model"] == "gpt-5" and f["object"] == "chat.completion.chunk" for f in frames)
    assert frames[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert "".join(f["choices"][0]["delta"].get("content") or "" for f in frames) == "Hello from the"


def test_stop_through_yupp_keeps_its_role_chunk_and_reasoning(with_yupp, yupp, openai_for, serve):
    server = serve(**with_yupp)
    client = openai_for(server)
    chunks = list(
        client.chat.completions.create(
            model="DeepSeek R1\n\U0001f9e0",
            messages=SAY_HELLO,
            stream=True,
            stop=" real",
            extra_headers={"X-Provider": "yupp2api"},
        )
    )
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert reasoning == yupp.reasoning
    assert text == "Hello from the"
