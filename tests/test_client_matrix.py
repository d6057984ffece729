"""Real client libraries and real clients' request bodies against the gateway and the fake bridge."""

from __future__ import annotations

from functools import reduce
from operator import add

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.conftest import CLIENT_KEY
from tests.upstreams.models import ToolUser

PARIS = ("get_weather", {"city": "Paris"})


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
    messages += [
        asked,
        ToolMessage(get_weather.invoke(asked.tool_calls[0]["args"]), tool_call_id=asked.tool_calls[0]["id"]),
    ]
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
