"""Tool calling emulated for upstreams without it: tools told to the model, its calls read back as `tool_calls`."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.helpers.sseclient_raw import stream_chat
from tests.upstreams.models import ToolUser, system_text

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PARIS = ("get_weather", {"city": "Paris"})


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()]


def test_tool_call_comes_back_as_tool_calls(openai_client, bridge):
    bridge.model = ToolUser([PARIS], preface="Let me look that up.\n")
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert calls_of(choice.message) == [PARIS]
    assert choice.message.tool_calls[0].id.startswith("call_") and choice.message.tool_calls[0].type == "function"
    assert choice.message.content.strip() == "Let me look that up."
    sent = bridge.requests[-1].json
    # The bridge gets the tools as an instruction, never as fields it would drop.
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)
    assert "get_weather: Current weather in a city." in system_text(sent)
    assert sent["messages"][-1] == ASK[0]


def test_model_that_ignores_the_instruction_stays_plain_text(openai_client, bridge):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER])
    assert reply.choices[0].message.content == "Hello from the real bridge"
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the real bridge"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_tool_call_is_tool_calls_deltas(live, auth, bridge):
    bridge.model = ToolUser([PARIS], preface="Checking. ")
    body = {"model": "gpt-5", "messages": ASK, "tools": [WEATHER], "stream": True}
    frames = stream_chat(live.url, body, auth).json_frames()
    deltas = [f["choices"][0]["delta"] for f in frames]
    assert "".join(d.get("content") or "" for d in deltas) == "Checking. "
    calls = [call for d in deltas for call in d.get("tool_calls") or ()]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert frames[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}


def test_sdk_stream_helper_assembles_the_call(openai_client, bridge):
    bridge.model = ToolUser([PARIS])
    with openai_client.chat.completions.stream(
        model="gpt-5", messages=ASK, tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")]
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    call = final.choices[0].message.tool_calls[0]
    assert call.function.parsed_arguments == GetWeather(city="Paris")
    assert final.choices[0].finish_reason == "tool_calls"


def test_sdk_parse_helper_reads_arguments_into_the_model(openai_client, bridge):
    bridge.model = ToolUser([PARIS])
    parsed = openai_client.chat.completions.parse(
        model="gpt-5", messages=ASK, tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")]
    )
    assert parsed.choices[0].message.tool_calls[0].function.parsed_arguments == GetWeather(city="Paris")


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_calls_come_back_together(openai_client, bridge, stream):
    bridge.model = ToolUser([PARIS, ("get_time", {})])
    kwargs = {"model": "gpt-5", "messages": ASK, "tools": [WEATHER, TIME]}
    if stream:
        with openai_client.chat.completions.stream(**kwargs) as events:
            message = events.get_final_completion().choices[0].message
    else:
        message = openai_client.chat.completions.create(**kwargs).choices[0].message
    assert calls_of(message) == [PARIS, ("get_time", {})]
    assert len({c.id for c in message.tool_calls}) == 2


def test_parallel_tool_calls_false_keeps_the_first_call_and_ends_the_generation(openai_client, bridge):
    bridge.model = ToolUser([PARIS, ("get_time", {})], after="\nAnd now, at length: " + "more " * 80)
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-5", messages=ASK, tools=[WEATHER, TIME], parallel_tool_calls=False, stream=True
        )
    )
    names = [t.function.name for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert names == ["get_weather"]
    assert "Call one tool at a time" in system_text(bridge.requests[-1].json)
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=5), "the upstream was read to its end"


def test_text_after_a_call_is_dropped(openai_client, bridge):
    # Models go on to invent the tool's result; the client gets the call and what came before it.
    bridge.model = ToolUser([PARIS], preface="Sure.\n", after="\n<tool_response>sunny</tool_response> It is sunny.")
    message = openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER]).choices[0].message
    assert calls_of(message) == [PARIS]
    assert message.content == "Sure.\n"


def test_tool_choice_none_sends_no_instruction_and_reads_no_calls(openai_client, bridge):
    bridge.reply = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == bridge.reply
    sent = bridge.requests[-1].json
    assert "tools" not in sent and "tool_choice" not in sent and not system_text(sent)


def test_tool_choice_required_without_a_call_is_invalid_model_output(openai_client, bridge):
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER], tool_choice="required")
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "invalid_model_output"
    assert "Hello from the real bridge" in raised.value.body["message"]
    assert "You must call at least one tool now." in system_text(bridge.requests[-1].json)


def test_tool_choice_required_without_a_call_ends_a_stream_with_an_error(openai_client):
    stream = openai_client.chat.completions.create(
        model="gpt-5", messages=ASK, tools=[WEATHER], tool_choice="required", stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert "answered in text" in raised.value.message


def test_named_tool_choice_offers_only_that_tool(openai_client, bridge):
    bridge.model = ToolUser([("get_time", {}), PARIS])
    choice = {"type": "function", "function": {"name": "get_time"}}
    reply = openai_client.chat.completions.create(
        model="gpt-5", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice
    )
    assert calls_of(reply.choices[0].message) == [("get_time", {})]
    told = system_text(bridge.requests[-1].json)
    assert "You must call the tool get_time now." in told and "get_weather" not in told


def test_call_to_a_tool_not_offered_is_invalid_model_output(openai_client, bridge):
    bridge.reply = '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>'
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER])
    assert raised.value.body["code"] == "invalid_model_output" and "launch_rockets" in raised.value.body["message"]


def test_unclosed_call_at_the_end_of_the_answer_still_counts(openai_client, bridge):
    bridge.reply = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, tools=[WEATHER])
    assert calls_of(reply.choices[0].message) == [PARIS]


def test_history_with_calls_and_results_reaches_the_bridge_as_text(openai_client, bridge):
    bridge.model = ToolUser([PARIS])
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    reply = openai_client.chat.completions.create(model="gpt-5", messages=history, tools=[WEATHER])
    assert reply.choices[0].message.content == "The tools said: 18 C and sunny"
    assert reply.choices[0].finish_reason == "stop"
    sent = bridge.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert sent[3]["content"] == '<tool_response name="get_weather">\n18 C and sunny\n</tool_response>'


def test_tools_through_yupp_are_emulated_too(serve, with_yupp, yupp, openai_for):
    yupp.reply = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    client = openai_for(serve(**with_yupp))
    with client.chat.completions.stream(
        model="GPT-4o-mini", messages=ASK, tools=[WEATHER], extra_headers={"X-Provider": "yupp2api"}
    ) as stream:
        final = stream.get_final_completion()
    assert calls_of(final.choices[0].message) == [PARIS]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tools_with_emulation_off_are_a_400_naming_the_provider(make_app, auth, bridge):
    client = make_app(GATEWAY_TOOL_EMULATION=False).test_client()
    answer = client.post(
        "/v1/chat/completions", headers=auth, json={"model": "gpt-5", "messages": ASK, "tools": [WEATHER]}
    )
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "tools_unsupported" and error["param"] == "tools"
    assert "LMArena Bridge" in error["message"] and "GATEWAY_TOOL_EMULATION" in error["message"]
    assert not [r for r in bridge.requests if r.path == "/v1/chat/completions"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_tools_the_gateway_cannot_honour_are_a_400(client, auth, bridge, extra, param):
    answer = client.post("/v1/chat/completions", headers=auth, json={"model": "gpt-5", "messages": ASK, **extra})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["param"] == param
    assert not [r for r in bridge.requests if r.path == "/v1/chat/completions"]


def test_history_with_odd_call_ids_and_legacy_function_turns_is_still_rendered(client, auth, bridge):
    call = {"id": ["not", "a", "string"], "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "function", "name": "get_weather", "content": "sunny", "tool_call_id": {"odd": 1}},
    ]
    answer = client.post("/v1/chat/completions", headers=auth, json={"model": "gpt-5", "messages": history})
    assert answer.status_code == 200
    sent = bridge.requests[-1].json["messages"]
    assert sent[-1] == {"role": "user", "content": '<tool_response name="get_weather">\nsunny\n</tool_response>'}
