"""The answer-shaping stages on their own: whatever way a text is cut into pieces, the answer is the same."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import GatewayError
from app.providers.base import ChatRequest, Chunk
from app.relay import ChunkRelay
from app.shaping import read_shaping
from app.shaping.limits import Limits

REPRODUCIBLE = settings(derandomize=True, database=None, deadline=None, max_examples=300)
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
# Few letters, so stop sequences and their near misses are common.
texts = st.text(alphabet="ab\n:", max_size=40)


@st.composite
def cuts(draw, text: str) -> list[str]:
    """Return text cut into pieces at drawn places (empty pieces included)."""
    points = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def run_limits(limits: Limits, pieces: list[str]) -> str:
    out = []
    for piece in pieces:
        out.append(limits.feed(piece))
        assert len(limits.held) <= max(limits.longest - 1, 0)  # never more than the longest stop less one
    out.append(limits.finish())
    return "".join(out)


def expected(text: str, stops: list[str], max_chars: int | None) -> tuple[str, str | None]:
    found = [i for s in stops if (i := text.find(s)) >= 0]
    cut, reason = (text[: min(found)], "stop") if found else (text, None)
    if max_chars is not None and len(cut) > max_chars:
        return cut[:max_chars], "length"
    return cut, reason


@REPRODUCIBLE
@given(st.data(), texts, st.lists(st.text(alphabet="ab\n:", min_size=1, max_size=5), max_size=3))
def test_limits_cut_at_the_first_stop_however_the_text_is_split(data, text, stops):
    pieces = data.draw(cuts(text))
    limits = Limits(tuple(stops), None)
    assert (run_limits(limits, pieces), limits.reason) == expected(text, stops, None)


@REPRODUCIBLE
@given(st.data(), texts, st.lists(st.text(alphabet="ab\n:", min_size=1, max_size=5), max_size=2), st.integers(0, 30))
def test_limits_cut_at_the_budget_or_the_stop_whichever_comes_first(data, text, stops, max_chars):
    pieces = data.draw(cuts(text))
    limits = Limits(tuple(stops), max_chars)
    assert (run_limits(limits, pieces), limits.reason) == expected(text, stops, max_chars)
    assert limits.used <= max_chars


def test_limits_pass_text_that_cannot_begin_a_stop_at_once():
    limits = Limits(("\n\nUser:",), None)
    assert limits.feed("Hello there") == "Hello there"
    assert limits.feed(", friend\n") == ", friend"  # only the "\n" that may begin the stop waits
    assert limits.feed("\nUs") == ""
    assert limits.feed("ually") == "\n\nUsually"


SHAPED = [
    # (request fields, the model's whole answer)
    ({"response_format": {"type": "json_object"}}, 'Here: ```json\n{"a": "x\\"}{", "b": {"c": [1, "}"]}}\n``` bye'),
    (
        {"tools": [WEATHER]},
        'Looking <b>now</b> <tool_call>\n{"name": "get_weather", "arguments": {"city": "<P>"}}\n</tool_call>',
    ),
    ({"tools": [WEATHER]}, "a < b, and <tool is not <tool_call, nor <tool_cal"),
    ({"tools": [WEATHER], "stop": "</tool_call>"}, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call> x'),
    ({"tools": [WEATHER], "max_tokens": 9}, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'),
]


def shaped(fields: dict, pieces: list[str]) -> tuple[dict, str]:
    """Return the message and finish reason a Shaper makes of pieces (ids left out)."""
    shaper = read_shaping({"messages": [{"role": "user", "content": "hi"}], **fields}).start()
    deltas = []
    for piece in pieces:
        deltas += shaper.feed(piece)
        if shaper.cut:
            break
    more, reason = shaper.finish("stop")
    calls = [c["function"] for d in deltas + more for c in d.get("tool_calls", ())]
    return {"content": "".join(d.get("content", "") for d in deltas + more), "calls": calls}, reason


@REPRODUCIBLE
@given(st.data(), st.sampled_from(SHAPED))
def test_shaper_gives_one_answer_however_the_text_is_split(data, case):
    fields, answer = case
    pieces = data.draw(cuts(answer))
    try:
        whole = shaped(fields, [answer])
    except GatewayError as error:
        with pytest.raises(type(error)):
            shaped(fields, pieces)
        return
    assert shaped(fields, pieces) == whole


def test_shaper_whole_answers():
    assert shaped(*SHAPED[0][:1], [SHAPED[0][1]]) == (
        {"content": '{"a": "x\\"}{", "b": {"c": [1, "}"]}}', "calls": []},
        "stop",
    )
    message, reason = shaped(SHAPED[1][0], [SHAPED[1][1]])
    assert message == {
        "content": "Looking <b>now</b> ",
        "calls": [{"name": "get_weather", "arguments": '{"city": "<P>"}'}],
    }
    assert reason == "tool_calls"
    assert shaped(SHAPED[2][0], [SHAPED[2][1]]) == ({"content": SHAPED[2][1], "calls": []}, "stop")
    # The stop sequence cuts the block before it closes: an unclosed block at the end still counts.
    assert shaped(SHAPED[3][0], [SHAPED[3][1]])[1] == "tool_calls"
    with pytest.raises(GatewayError, match="max_tokens inside a tool call"):
        shaped(SHAPED[4][0], [SHAPED[4][1]])


def test_relay_passes_chunks_the_shaper_leaves_whole_as_the_upstream_sent_them():
    # The relay's shortcut for untouched text (a perf: line in app/relay.py) must frame exactly as the plain path.
    def chunk(delta: dict, reason: str | None = None) -> Chunk:
        obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "upstream-name"}
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": reason}]
        return Chunk(json.dumps(obj), obj)

    def frames(fields: dict) -> list[bytes]:
        body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], **fields}
        relay = ChunkRelay(ChatRequest(body=body, model="gpt-5", stream=True, shaping=read_shaping(body)))
        out: list[bytes] = []
        for delta in ({"content": "Hello"}, {"content": " there"}, {"content": ", you"}):
            relay.frames(chunk(delta), out)
        relay.frames(chunk({}, "stop"), out)
        relay.end(out)
        return out

    plain, shaped = frames({}), frames({"stop": "never", "max_tokens": 100})
    assert shaped[:-1] == plain[:-1]  # the role chunk and every content chunk, byte for byte
    assert [json.loads(f[len(b"data: ") :])["choices"][0]["finish_reason"] for f in (plain[-1], shaped[-1])] == [
        "stop",
        "stop",
    ]
