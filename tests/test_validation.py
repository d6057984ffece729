"""Bad requests get a precise 400 in OpenAI's shape and never reach the upstream."""

from __future__ import annotations

import json

import pytest

GOOD = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}


def _with(**changes):
    body = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


CASES = [
    ("missing model", _with(model=...), "model"),
    ("empty model", _with(model="  "), "model"),
    ("model not a string", _with(model=5), "model"),
    ("missing messages", _with(messages=...), "messages"),
    ("messages not a list", _with(messages="hi"), "messages"),
    ("empty messages", _with(messages=[]), "messages"),
    ("message not an object", _with(messages=["hi"]), "messages[0]"),
    ("unknown role", _with(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    ("missing content", _with(messages=[{"role": "user"}]), "messages[0].content"),
    ("content a number", _with(messages=[{"role": "user", "content": 3}]), "messages[0].content"),
    ("empty parts", _with(messages=[{"role": "user", "content": []}]), "messages[0].content"),
    (
        "part without type",
        _with(messages=[{"role": "user", "content": [{"text": "x"}]}]),
        "messages[0].content[0].type",
    ),
    (
        "text part without text",
        _with(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
    ),
    (
        "image part without url",
        _with(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0].image_url",
    ),
    ("tool message without id", _with(messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id"),
    ("stream not a boolean", _with(stream="yes"), "stream"),
    ("stream as 1", _with(stream=1), "stream"),
    ("temperature too high", _with(temperature=3), "temperature"),
    ("temperature a string", _with(temperature="hot"), "temperature"),
    ("temperature a boolean", _with(temperature=True), "temperature"),
    ("top_p out of range", _with(top_p=1.5), "top_p"),
    ("max_tokens zero", _with(max_tokens=0), "max_tokens"),
    ("max_tokens a float", _with(max_tokens=1.5), "max_tokens"),
    ("n above one", _with(n=2), "n"),
    ("stop a number", _with(stop=5), "stop"),
    ("stop too many", _with(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stream_options not an object", _with(stream=True, stream_options="usage"), "stream_options"),
    ("include_usage not a boolean", _with(stream=True, stream_options={"include_usage": "yes"}), "include_usage"),
    ("tools not a list", _with(tools={"type": "function"}), "tools"),
]


@pytest.mark.parametrize(("name", "body", "param"), CASES, ids=[c[0] for c in CASES])
def test_chat_validation_rejects_with_param(client, auth, bridge, name, body, param):
    response = client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[-1].split("[")[0] in error["message"]
    assert bridge.requests == []


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"text"', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"model=gpt-5", "application/x-www-form-urlencoded"),
    ],
)
def test_chat_rejects_body_that_is_not_a_json_object(client, auth, bridge, raw, content_type):
    response = client.post("/v1/chat/completions", data=raw, headers={**auth, "Content-Type": content_type})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert bridge.requests == []


def test_chat_accepts_json_without_content_type(client, auth):
    # curl -d sends form content-type by default; the body is JSON all the same.
    response = client.post("/v1/chat/completions", data=json.dumps(GOOD), headers=auth, content_type="text/plain")
    assert response.status_code == 200


def test_chat_tolerates_unknown_fields_and_assistant_tool_calls(client, auth, bridge):
    body = _with(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        some_future_option={"x": 1},
        stream_options={"include_usage": True},  # without stream: tolerated, ignored
    )
    response = client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status_code == 200
    assert bridge.requests[-1].json["some_future_option"] == {"x": 1}
    assert "stream_options" not in bridge.requests[-1].json


def test_chat_oversized_body_is_413(make_app, auth, bridge):
    client = make_app(GATEWAY_MAX_BODY_BYTES=2048).test_client()
    body = _with(messages=[{"role": "user", "content": "x" * 4096}])
    response = client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_too_large"
    assert bridge.requests == []


def test_chat_too_many_messages_is_400(make_app, auth, bridge):
    client = make_app(GATEWAY_MAX_MESSAGES=3).test_client()
    body = _with(messages=[{"role": "user", "content": "hi"}] * 4)
    response = client.post("/v1/chat/completions", json=body, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "messages"


IMAGE_CASES = [
    ({"model": "nano-banana"}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "cat", "n": 0}, "n"),
    ({"prompt": "cat", "n": 99}, "n"),
    ({"prompt": "cat", "response_format": "png"}, "response_format"),
    ({"prompt": "cat", "model": ["x"]}, "model"),
]


@pytest.mark.parametrize(("body", "param"), IMAGE_CASES)
def test_images_validation_rejects_with_param(client, auth, bridge, body, param):
    response = client.post("/v1/images/generations", json=body, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param
    assert bridge.requests == []


# Bodies with a raw JSON escape of a lone surrogate put in at MARK: \ud800 without its pair decodes to a str no
# UTF-8 writer (the upstream request, the answer, the stores) can encode.
LONE_SURROGATES = [
    ("content", "/v1/chat/completions", _with(messages=[{"role": "user", "content": "hi MARK"}])),
    ("stream", "/v1/chat/completions", _with(stream=True, messages=[{"role": "user", "content": "MARK"}])),
    ("user", "/v1/chat/completions", _with(user="MARK")),
    ("unknown key", "/v1/chat/completions", _with(MARK=1)),
    ("image model", "/v1/images/generations", {"prompt": "a cat", "model": "MARK"}),
]


def _lone(body: dict, escape: str = "\\ud800") -> str:
    return json.dumps(body).replace("MARK", escape)


@pytest.mark.parametrize(("name", "path", "body"), LONE_SURROGATES, ids=[b[0] for b in LONE_SURROGATES])
@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF"])
def test_a_lone_surrogate_escape_is_400_and_never_reaches_upstream(client, auth, bridge, name, path, body, escape):
    raw = _lone(body, escape)
    response = client.post(path, data=raw, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_json" and "surrogate" in error["message"]
    assert bridge.requests == []


def test_a_lone_surrogate_in_a_utf16_body_is_400(client, auth, bridge):
    raw = _lone(LONE_SURROGATES[0][2]).encode("utf-16")
    response = client.post("/v1/chat/completions", data=raw, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert bridge.requests == []


def test_a_surrogate_pair_escape_is_text(client, auth, bridge):
    raw = '{"model":"gpt-5","messages":[{"role":"user","content":"smile \\ud83d\\ude00"}]}'
    response = client.post("/v1/chat/completions", data=raw, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 200
    assert bridge.requests[-1].json["messages"][0]["content"] == "smile \U0001f600"


def test_chat_n_above_one_says_only_one_is_supported(client, auth, bridge):
    response = client.post("/v1/chat/completions", json=_with(n=3), headers=auth)
    assert response.status_code == 400
    assert "only n=1 is supported" in response.get_json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=_with(n=1), headers=auth).status_code == 200


@pytest.mark.parametrize(
    ("part", "named"),
    [
        ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, "audio"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "files"),
    ],
)
def test_chat_parts_the_upstreams_cannot_carry_are_a_400_naming_them(client, auth, bridge, part, named):
    content = [{"type": "text", "text": "listen"}, part]
    response = client.post(
        "/v1/chat/completions", json=_with(messages=[{"role": "user", "content": content}]), headers=auth
    )
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "messages[0].content[1].type" and error["code"] == "unsupported_content"
    assert f"'{part['type']}' part" in error["message"] and named in error["message"]
    assert bridge.requests == []


def test_chat_accepts_user_as_an_object_and_drops_it(client, auth, bridge):
    response = client.post("/v1/chat/completions", json=_with(user={"id": "u1", "name": "Ann"}), headers=auth)
    assert response.status_code == 200
    assert "user" not in bridge.requests[-1].json
    client.post("/v1/chat/completions", json=_with(user="u1"), headers=auth)
    assert bridge.requests[-1].json["user"] == "u1"  # OpenAI's own form is forwarded as before


def test_chat_accepts_image_url_as_a_bare_string(client, auth, bridge):
    url = "data:image/png;base64,iVBORw0KGgo="
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": url}]
    response = client.post(
        "/v1/chat/completions", json=_with(messages=[{"role": "user", "content": content}]), headers=auth
    )
    assert response.status_code == 200
    assert bridge.requests[-1].json["messages"][0]["content"][1] == {"type": "image_url", "image_url": {"url": url}}
