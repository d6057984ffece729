"""JSON mode emulated: `response_format` asked of the model, the JSON object picked out of its answer and checked."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.helpers.sseclient_raw import stream_chat
from tests.upstreams.models import JsonWriter, system_text

ASK = [{"role": "user", "content": "Describe Paris."}]
CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
PARIS = '{"name": "Paris", "population": 2100000}'


class City(BaseModel):
    name: str
    population: int


def test_json_object_is_picked_out_of_prose_and_fences(openai_client, bridge):
    bridge.model = JsonWriter(f"Sure! Here it is:\n```json\n{PARIS}\n```\nAnything else?")
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, response_format={"type": "json_object"})
    assert reply.choices[0].message.content == PARIS
    assert reply.choices[0].finish_reason == "stop"
    sent = bridge.requests[-1].json
    assert "response_format" not in sent
    assert "Answer with one JSON object and nothing else" in system_text(sent)


def test_streamed_json_goes_out_as_it_comes_and_ends_the_generation(live, auth, bridge):
    bridge.model = JsonWriter(f"```json\n{PARIS}\n```\n" + "And more prose. " * 60)
    body = {"model": "gpt-5", "messages": ASK, "response_format": {"type": "json_object"}, "stream": True}
    frames = stream_chat(live.url, body, auth).json_frames()
    contents = [f["choices"][0]["delta"].get("content") for f in frames if f["choices"][0]["delta"].get("content")]
    assert "".join(contents) == PARIS
    assert len(contents) > 1  # relayed piece by piece, not gathered
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=5), "the prose after the JSON was read to its end"


def test_sdk_parse_gets_the_pydantic_object(openai_client, bridge):
    bridge.model = JsonWriter(PARIS)
    parsed = openai_client.chat.completions.parse(model="gpt-5", messages=ASK, response_format=City)
    assert parsed.choices[0].message.parsed == City(name="Paris", population=2100000)
    told = system_text(bridge.requests[-1].json)
    assert '"population":{"title":"Population","type":"integer"}' in told  # the SDK's strict schema, passed on


def test_sdk_beta_parse_and_stream_helpers(openai_client, bridge):
    bridge.model = JsonWriter("Here:\n" + PARIS)
    parsed = openai_client.beta.chat.completions.parse(model="gpt-5", messages=ASK, response_format=City)
    assert parsed.choices[0].message.parsed == City(name="Paris", population=2100000)
    with openai_client.chat.completions.stream(model="gpt-5", messages=ASK, response_format=City) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.done" in events
    assert final.choices[0].message.parsed == City(name="Paris", population=2100000)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("Paris is lovely in spring.", "without a JSON object"),
        ('{"name": "Paris", "population": 2100000', "incomplete"),
        ("{'name': 'Paris'}", "not valid JSON"),
        ('{"name": "Paris", "population": "two million"}', "does not match the schema 'city'"),
    ],
)
def test_answer_that_is_not_the_json_asked_for_is_invalid_model_output(openai_client, bridge, answer, said):
    bridge.model = JsonWriter(answer)
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.chat.completions.create(model="gpt-5", messages=ASK, response_format=JSON_SCHEMA)
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "invalid_model_output"
    assert said in raised.value.body["message"]


def test_schema_mismatch_in_a_stream_is_an_error_chunk_at_the_end(live, auth, bridge):
    bridge.model = JsonWriter('{"name": "Paris", "population": "many"}')
    body = {"model": "gpt-5", "messages": ASK, "response_format": JSON_SCHEMA, "stream": True}
    result = stream_chat(live.url, body, auth)
    frames = result.json_frames()
    assert result.status == 200 and result.data[-1] == "[DONE]"
    sent = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f.get("choices"))
    assert json.loads(sent) == {"name": "Paris", "population": "many"}  # relayed as it came, checked at the end
    assert frames[-1]["error"]["code"] == "invalid_model_output"
    assert "'many' is not of type 'integer'" in frames[-1]["error"]["message"]
    assert "['population']" in frames[-1]["error"]["message"]


def test_json_cut_by_max_tokens_says_so(openai_client, bridge):
    bridge.model = JsonWriter(PARIS)
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.chat.completions.create(
            model="gpt-5", messages=ASK, response_format={"type": "json_object"}, max_tokens=3
        )
    assert "max_tokens" in raised.value.body["message"]


def test_text_response_format_changes_nothing(openai_client, bridge):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, response_format={"type": "text"})
    assert reply.choices[0].message.content == "Hello from the real bridge"
    assert not system_text(bridge.requests[-1].json)


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "http://127.0.0.1:9/x.json"}}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/$defs/none"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_response_format_the_gateway_cannot_honour_is_a_400(client, auth, bridge, response_format, param):
    body = {"model": "gpt-5", "messages": ASK, "response_format": response_format}
    answer = client.post("/v1/chat/completions", headers=auth, json=body)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["param"] == param
    assert not [r for r in bridge.requests if r.path == "/v1/chat/completions"]


def test_local_refs_are_followed(openai_client, bridge):
    bridge.model = JsonWriter('{"home": {"name": "Paris", "population": 1}}')
    schema = {"type": "object", "properties": {"home": {"$ref": "#/$defs/city"}}, "$defs": {"city": CITY_SCHEMA}}
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, response_format=response_format)
    assert json.loads(reply.choices[0].message.content)["home"]["name"] == "Paris"


def test_tools_and_json_mode_together_take_a_call_or_the_json(openai_client, bridge):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    kwargs = {"model": "gpt-5", "messages": ASK, "tools": tools, "response_format": {"type": "json_object"}}
    bridge.reply = '<tool_call>{"name": "lookup", "arguments": {"q": "Paris"}}</tool_call>'
    called = openai_client.chat.completions.create(**kwargs).choices[0]
    assert called.finish_reason == "tool_calls" and called.message.tool_calls[0].function.name == "lookup"
    bridge.reply = f"Done: {PARIS}"
    answered = openai_client.chat.completions.create(**kwargs).choices[0]
    assert (answered.finish_reason, answered.message.content) == ("stop", PARIS)
