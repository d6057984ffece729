"""Real client libraries and real clients' request bodies against the gateway and the fake bridge.

Python: the official `openai` SDK, LangChain, litellm. Node: the official `openai` SDK (`tests/node/`, installed
from the npm registry by `npm ci` the first time these tests run). SillyTavern and Open WebUI: the bodies they send
to an OpenAI-compatible endpoint (`tests/data/clients/`, written from their source: SillyTavern's custom
chat-completion source, Open WebUI's OpenAI connection with its user info, native tool calling and title task).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import reduce
from operator import add
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import CLIENT_KEY
from tests.helpers.sseclient_raw import stream_chat
from tests.upstreams.models import JsonWriter, ToolUser, system_text

TESTS = Path(__file__).resolve().parent
BODIES = TESTS / "data" / "clients"
NODE = TESTS / "node"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PARIS = ("get_weather", {"city": "Paris"})
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def body(name: str) -> dict:
    """Return a client's recorded request body from tests/data/clients."""
    return json.loads((BODIES / f"{name}.json").read_text())


def streamed_text(frames: list[dict]) -> str:
    return "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f.get("choices"))


# --- the official openai SDK for Python ---------------------------------------------------------------------------


def test_python_sdk_chat_stream_tools_and_json(openai_client, bridge):
    reply = openai_client.chat.completions.create(model="gpt-5", messages=ASK, stop=" bridge")
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Hello from the real", "stop")
    bridge.model = ToolUser([PARIS])
    with openai_client.chat.completions.stream(model="gpt-5", messages=ASK, tools=[WEATHER]) as stream:
        called = stream.get_final_completion().choices[0]
    assert called.finish_reason == "tool_calls" and called.message.tool_calls[0].function.name == "get_weather"

    class City(BaseModel):
        name: str

    bridge.model = JsonWriter('{"name": "Paris"}')
    parsed = openai_client.chat.completions.parse(model="gpt-5", messages=ASK, response_format=City)
    assert parsed.choices[0].message.parsed == City(name="Paris")


# --- LangChain --------------------------------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"18 C and sunny in {city}"


def langchain(server, **kwargs) -> ChatOpenAI:
    """Return LangChain's OpenAI chat model pointed at a served gateway."""
    return ChatOpenAI(
        model="gpt-5", base_url=server.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20, **kwargs
    )


def test_langchain_bind_tools_runs_a_whole_tool_round(live, bridge):
    bridge.model = ToolUser([PARIS])
    bound = langchain(live).bind_tools([get_weather])
    messages = [HumanMessage("What is the weather in Paris?")]
    asked = bound.invoke(messages)
    assert [(c["name"], c["args"]) for c in asked.tool_calls] == [PARIS]
    result = get_weather.invoke(asked.tool_calls[0]["args"])
    messages += [asked, ToolMessage(result, tool_call_id=asked.tool_calls[0]["id"])]
    answered = bound.invoke(messages)
    assert answered.content == "The tools said: 18 C and sunny in Paris"
    assert not answered.tool_calls


def test_langchain_streams_tool_call_chunks(live, bridge):
    bridge.model = ToolUser([PARIS], preface="One moment. ")
    chunks = list(langchain(live).bind_tools([get_weather]).stream("What is the weather in Paris?"))
    whole = reduce(add, chunks)
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [PARIS]
    assert whole.content == "One moment. "
    assert whole.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_ignored_instruction_is_plain_text(live, bridge):
    answer = langchain(live).bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert answer.content == "Hello from the real bridge" and not answer.tool_calls
    assert answer.response_metadata["finish_reason"] == "stop"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(live, bridge, method):
    class City(BaseModel):
        """A city."""

        name: str
        population: int

    if method == "json_schema":
        bridge.model = JsonWriter('Here you go: {"name": "Paris", "population": 2100000}')
    else:  # a tool forced by name: tool_choice {"type": "function", ...}
        bridge.model = ToolUser([("City", {"name": "Paris", "population": 2100000})])
    structured = langchain(live).with_structured_output(City, method=method)
    assert structured.invoke("Describe Paris.") == City(name="Paris", population=2100000)


def test_langchain_stop_and_max_tokens(live):
    assert langchain(live).invoke("Say hello", stop=[" the"]).content == "Hello from"
    cut = langchain(live, max_tokens=1).invoke("Say hello")
    assert (cut.content, cut.response_metadata["finish_reason"]) == ("Hell", "length")


# --- litellm ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litellm():
    """Import litellm without its start-up download of model prices (no network here)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

    litellm.telemetry = False
    return litellm


@pytest.mark.slow  # importing litellm takes seconds
def test_litellm_completion_stream_and_tools(live, bridge, litellm):
    # gpt-5 is a reasoning model to litellm, which then refuses stop itself: another model the fake bridge lists.
    target = {"model": "openai/gemini-2.5-pro", "api_base": live.url + "/v1", "api_key": CLIENT_KEY, "max_retries": 0}
    reply = litellm.completion(messages=ASK, stop=[" real"], **target)
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Hello from the", "stop")
    chunks = list(litellm.completion(messages=ASK, max_tokens=2, stream=True, **target))
    whole = litellm.stream_chunk_builder(chunks)
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == ("Hello fr", "length")
    bridge.model = ToolUser([PARIS])
    called = litellm.completion(messages=ASK, tools=[WEATHER], **target).choices[0]
    assert called.finish_reason == "tool_calls"
    assert (
        called.message.tool_calls[0].function.name,
        json.loads(called.message.tool_calls[0].function.arguments),
    ) == PARIS


# --- the official openai SDK for Node ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    """Return tests/node with the openai package installed (npm ci from the registry the first time)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the Node SDK tests (Debian: apt-get install nodejs npm)")
    if not (NODE / "node_modules" / "openai" / "package.json").is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE, check=True, capture_output=True, timeout=300)
    return NODE


def node(node_sdk: Path, server, scenario: str) -> dict:
    """Run one scenario of tests/node/client.mjs against server and return what it printed."""
    env = {**os.environ, "GATEWAY_URL": server.url + "/v1", "GATEWAY_KEY": CLIENT_KEY}
    done = subprocess.run(
        ["node", "client.mjs", scenario], cwd=node_sdk, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow  # a Node process per scenario
def test_node_sdk_chat_and_stream(node_sdk, live):
    chat = node(node_sdk, live, "chat")
    assert (chat["content"], chat["finish_reason"], chat["usage"]["completion_tokens"]) == ("Hello from t", "length", 3)
    streamed = node(node_sdk, live, "stream")
    assert (streamed["text"], streamed["finish_reason"]) == ("Hello from the", "stop")
    assert streamed["usage"]["completion_tokens"] == 4


@pytest.mark.slow  # a Node process per scenario
def test_node_sdk_tools(node_sdk, live, bridge):
    bridge.model = ToolUser([PARIS])
    for scenario in ("tools", "toolStream"):
        seen = node(node_sdk, live, scenario)
        assert seen == {"finish_reason": "tool_calls", "calls": [list(PARIS)]}, scenario
    ran = node(node_sdk, live, "runTools")
    assert ran == {"content": "The tools said: 18 C and sunny in Paris", "rounds": 2}


@pytest.mark.slow  # a Node process per scenario
def test_node_sdk_json_and_errors(node_sdk, live, bridge):
    bridge.model = JsonWriter('```json\n{"name": "Paris"}\n```')
    assert node(node_sdk, live, "json") == {"parsed": {"name": "Paris"}}
    failed = node(node_sdk, live, "error")
    assert (failed["raised"], failed["status"], failed["code"]) == (True, 502, "invalid_model_output")


# --- SillyTavern and Open WebUI request bodies ------------------------------------------------------------------


def test_sillytavern_roleplay_stream_stops_before_the_user_speaks(live, auth, bridge):
    bridge.reply = "*Seraphina smiles.* You are safe in my glade.\nUser: thank you\nSeraphina: rest now"
    result = stream_chat(live.url, body("sillytavern-roleplay"), auth)
    frames = result.json_frames()
    assert result.status == 200 and result.data[-1] == "[DONE]"
    assert streamed_text(frames) == "*Seraphina smiles.* You are safe in my glade."
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"
    sent = bridge.requests[-1].json
    assert sent["messages"] == body("sillytavern-roleplay")["messages"]  # names and all, as the client wrote them
    assert sent["top_k"] == 0 and sent["stop"] == ["\nUser:", "\nSeraphina:"]


def test_sillytavern_impersonation_honours_max_tokens(live, auth, bridge):
    bridge.reply = "Thank you, I feel better already."
    answer = live.app.test_client().post("/v1/chat/completions", json=body("sillytavern-impersonate"), headers=auth)
    assert answer.status_code == 200
    choice = answer.get_json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Thank you, I feel be", "length")
    assert answer.get_json()["usage"]["completion_tokens"] == 5


def test_openwebui_chat_with_user_object_and_image(live, auth, bridge):
    result = stream_chat(live.url, body("openwebui-chat"), auth)
    assert result.status == 200
    assert streamed_text(result.json_frames()) == "Hello from the real bridge"
    sent = bridge.requests[-1].json
    assert "user" not in sent
    assert sent["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_openwebui_native_tool_calling_round(live, auth, bridge):
    bridge.model = ToolUser([PARIS])
    frames = stream_chat(live.url, body("openwebui-native-tools"), auth).json_frames()
    calls = [c for f in frames for c in f["choices"][0]["delta"].get("tool_calls") or ()]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [PARIS]
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"
    frames = stream_chat(live.url, body("openwebui-tool-result"), auth).json_frames()
    assert streamed_text(frames) == "The tools said: 18 C and sunny"
    assert "<tool_response" in json.dumps(bridge.requests[-1].json["messages"])


def test_openwebui_title_task_passes_its_json_through(live, auth, bridge):
    bridge.reply = '{"title": "\u2600\ufe0f Paris Weather"}'
    answer = live.app.test_client().post("/v1/chat/completions", json=body("openwebui-title"), headers=auth)
    assert answer.status_code == 200
    assert json.loads(answer.get_json()["choices"][0]["message"]["content"]) == {"title": "\u2600\ufe0f Paris Weather"}
    assert not system_text(bridge.requests[-1].json)  # nothing asked of the gateway, nothing added
