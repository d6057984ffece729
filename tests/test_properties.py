"""Properties (hypothesis): SSE framing, upstream streams, request and session validation, request ids.

Tests that need an app build it once from the conftest fixtures and run an inner @given function over it, so every
generated example shares that app (function-scoped fixtures are not reset between examples).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from itertools import pairwise

import pytest
import sseclient
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from app import sse
from app.config import SETTINGS
from app.errors import GatewayError, InvalidRequestError
from app.providers.base import ChatRequest, ProviderSettings
from app.providers.lmarena_bridge import LMArenaBridge
from app.providers.transport import StreamTimer
from app.providers.yupp2api import Yupp2Api
from app.session_rules import NAME, check_base_url, check_domain, check_models, check_name, check_uuid
from app.store import get_store
from app.validation import ROLES, parse_chat_request, parse_image_request
from tests.upstreams.fake_bridge import CLOUDFLARE, NETWORK_ERROR, NO_BROWSER, RATE_LIMITED, TOO_LARGE
from tests.upstreams.httpserver import FakeUpstream, UpstreamHandler

# Hundreds of generated examples per test, some through a live gateway: seconds each, so not in `make test-fast`.
pytestmark = pytest.mark.slow

# The same examples on every run (CI included), none remembered between runs, no per-example time limit.
REPRODUCIBLE = settings(derandomize=True, database=None, deadline=None)

MODEL = "gpt-5"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
DOMAINS = next(s.default for s in SETTINGS if s.name == "GATEWAY_SESSION_DOMAINS")
ZERO_ID = "00000000-0000-4000-8000-000000000000"
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Values that trip validators: extremes, NaN, look-alike strings, empty containers.
awkward = json_values | st.sampled_from(
    [10**30, -(10**30), 2**63, -(2**63) - 1, 1e308, 5e-324, float("nan"), float("inf"), "NaN", "1", "", "\x00"]
    + ["\u202e", [], {}, [[]], {"": None}, True]
)


def nested(depth: int) -> bytes:
    """Return a JSON array nested depth deep: valid JSON that Python's parser may refuse to recurse into."""
    return b"[" * depth + b"]" * depth


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Return data cut at these offsets: how it may arrive off a socket, even mid-character."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


@st.composite
def cut_up(draw, data: bytes) -> list[bytes]:
    """Draw a way to cut data into pieces."""
    return pieces(data, draw(st.lists(st.integers(0, len(data)), max_size=12)))


def read_events(chunks: Iterable[bytes]) -> list[str]:
    """Return each event's data as sseclient-py, a reference SSE reader (clients use ones like it), reads them."""
    return [event.data for event in sseclient.SSEClient(iter(chunks)).events()]


def gateway_reads(chunks: Iterable[bytes]) -> list[str]:
    """Return each event's data as the gateway's own reader (app.sse.EventReader) takes them off an upstream."""
    reader = sse.EventReader()
    return [data for piece in chunks for data in reader.feed(piece)]


def read_all(stream) -> list:
    """Return every chunk of a provider stream, read as the relay does; its timer bounds a stall."""
    chunks = []
    for _ in range(100_000):
        if stream.ready(1.0) and (read := stream.read()) is None:
            return chunks
        chunks.extend(read or ())
    raise AssertionError("the stream never ended")


def assert_openai_error(body) -> None:
    """Assert body is exactly OpenAI's error shape, and not the gateway's report of its own crash."""
    assert isinstance(body, dict) and body.keys() == {"error"}
    error = body["error"]
    assert isinstance(error, dict) and error.keys() == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["code"] != "internal_error" and not error["message"].startswith("Unexpected failure")


def assert_answer(response, *, upstream_codes: frozenset[str] = frozenset()) -> None:
    """Assert a 2xx (an SSE stream ends with [DONE]) or a 4xx in OpenAI's shape; 5xx only with upstream_codes."""
    try:
        payload = response.get_data()  # runs a streamed body to its end
    finally:
        response.close()
    if response.status_code < 300:
        if response.mimetype == "text/event-stream":
            assert read_events([payload])[-1] == "[DONE]"
        return
    body = json.loads(payload)
    assert_openai_error(body)
    assert response.status_code < 500 or body["error"]["code"] in upstream_codes, body


# 1. SSE framing


def sse_lines(text: str) -> str:
    """Return text as SSE delivers it: the format has no bare CR, so \\r\\n and \\r arrive as \\n."""
    return re.sub(r"\r\n?", "\n", text)


@settings(REPRODUCIBLE, max_examples=200)
@given(texts=st.lists(st.text(), max_size=6), data=st.data())
def test_sse_frames_read_back_by_sseclient_in_any_pieces(texts, data):
    stream = b"".join(sse.KEEPALIVE + sse.frame(text) for text in texts) + sse.DONE
    assert read_events(data.draw(cut_up(stream))) == [*map(sse_lines, texts), "[DONE]"]


@settings(REPRODUCIBLE, max_examples=300)
@given(
    events=st.lists(
        st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n")), min_size=1, max_size=3), max_size=5
    ),
    ends=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    comments=st.booleans(),
    data=st.data(),
)
def test_gateway_reads_upstream_events_as_sseclient_does_in_any_pieces(events, ends, comments, data):
    # Upstream events: one or more data fields each, any line ends the format allows, comments between.
    lines = []
    for fields in events:
        if comments:
            lines.append(b": keep-alive")
        lines.extend(b"data: " + text.encode() for text in fields)
        lines.append(b"")
    stream = b"".join(line + ends for line in lines)
    pieces = data.draw(cut_up(stream))
    assert gateway_reads(pieces) == read_events([stream]) == ["\n".join(fields) for fields in events]


@settings(REPRODUCIBLE, max_examples=200)
@given(objects=st.lists(json_values, max_size=5), data=st.data())
def test_sse_json_frames_read_back_exactly_in_any_pieces(objects, data):
    stream = b"".join(map(sse.json_frame, objects))
    pieces = data.draw(cut_up(stream))
    assert [json.loads(text) for text in read_events(pieces)] == objects
    assert [json.loads(text) for text in gateway_reads(pieces)] == objects


# 2. Upstream streams: chunks or a GatewayError, whatever the bytes


class ScriptedUpstream(FakeUpstream):
    """An OpenAI-style upstream that answers every chat request with `status` and the bytes in `pieces`."""

    server_header = "uvicorn"

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.pieces: list[bytes] = []

    def handle(self, h: UpstreamHandler) -> None:
        if h.route_path == "/v1/models":
            h.send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0}]})
        elif self.status != 200:
            h.send_body(self.status, b"".join(self.pieces), "application/json")
        else:
            h.start_stream()
            for piece in self.pieces:
                h.write_chunk(piece)
            h.end_stream()


def chunk(delta: dict, model: str = MODEL) -> dict:
    """Return a one-choice `chat.completion.chunk` as the upstreams send it."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


bridge_said = st.sampled_from(
    [RATE_LIMITED, CLOUDFLARE, TOO_LARGE, NO_BROWSER, NETWORK_ERROR, "Response timed out after 3 seconds.", "状态: 500"]
) | st.text(max_size=20)
content_chunks = st.builds(
    lambda text, model: chunk({"content": text}, model), st.text(max_size=20), st.sampled_from([MODEL, "x"])
)
chunk_objects = st.one_of(
    content_chunks,
    content_chunks,
    st.builds(
        lambda before, said: chunk({"content": f"{before}\n\n[LMArena Bridge Error]: {said}"}),
        st.text(max_size=5),
        bridge_said,
    ),
    st.builds(lambda error: {"error": error}, json_values | bridge_said.map(lambda s: f"[LMArena Bridge Error]: {s}")),
    json_values,
)


def data_lines(obj, multiline: bool) -> list[bytes]:
    """Return the `data:` lines of one JSON event; multiline spreads it over several, as the SSE format allows."""
    if multiline:
        return [b"data: " + line.encode() for line in json.dumps(obj, indent=1).split("\n")]
    return [b"data: " + json.dumps(obj, ensure_ascii=False).encode()]


content_events = st.builds(data_lines, content_chunks, st.booleans())


@st.composite
def sse_events(draw) -> list[bytes]:
    """Return the lines of one upstream event: a chunk, an error, junk, a comment, [DONE], deep or partial JSON."""
    kind = draw(st.sampled_from(["json", "json", "multiline", "partial", "text", "junk", "fixed", "deep"]))
    if kind in ("json", "multiline"):
        return data_lines(draw(chunk_objects), kind == "multiline")
    if kind == "partial":
        text = json.dumps(draw(chunk_objects)).encode()
        return [b"data: " + text[: draw(st.integers(0, len(text)))]]
    if kind == "text":
        return [b"data: " + draw(st.text(max_size=30)).encode()]
    if kind == "junk":
        return [draw(st.binary(max_size=40))]
    if kind == "deep":
        return [b"data: " + nested(draw(st.integers(1, 3000)))]
    return draw(
        st.sampled_from(
            [
                [b": keep-alive"],
                [b"event: ping", b"id: 7", b"retry: x"],
                [b"data: [DONE]"],
                [b"data:"],
                [b"data: null"],
                [b"data: []"],
            ]
        )
    )


@st.composite
def upstream_bodies(draw, started: bool = False) -> bytes:
    """Return an upstream's whole answer: events with one kind of line ending, perhaps cut short.

    A started answer opens with content, so what follows reaches the client through the relay.
    """
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    events = draw(st.lists(content_events, min_size=1, max_size=3)) if started else []
    events += draw(st.lists(sse_events(), max_size=6))
    body = b"".join(eol.join(lines) + eol + eol for lines in events)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body


statuses = st.sampled_from([200] * 12 + [400, 401, 404, 413, 422, 429, 500, 503])
# What a refusal carries. Not deeply nested JSON: see test_upstream_json_nested_too_deeply_is_a_gateway_error.
error_bodies = st.one_of(
    json_values,
    st.builds(lambda error: {"error": error}, json_values | bridge_said.map(lambda s: f"[LMArena Bridge Error]: {s}")),
    st.builds(lambda detail: {"detail": detail}, json_values | bridge_said),
).map(lambda body: json.dumps(body, ensure_ascii=False).encode()) | st.binary(max_size=60)


@st.composite
def upstream_answers(draw, started: bool = False) -> tuple[int, bytes]:
    """Return (status, body): a stream for 200, a refusal's body for any other status."""
    status = draw(statuses)
    return status, draw(upstream_bodies(started) if status == 200 else error_bodies)


@pytest.fixture(scope="module")
def scripted():
    """Start one scripted upstream for the module."""
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def stream_providers(scripted):
    """The two providers' stream parsers, both reading from the scripted upstream."""
    config = ProviderSettings(base_url=scripted.url, max_retries=0, first_byte_timeout=5, idle_timeout=5)
    providers = [LMArenaBridge(config), Yupp2Api(config)]
    yield providers
    for provider in providers:
        provider.close()


@settings(REPRODUCIBLE, max_examples=150)
@given(answer=upstream_answers(), data=st.data())
def test_upstream_stream_yields_chunks_or_gateway_error(scripted, stream_providers, answer, data):
    scripted.status, scripted.pieces = answer[0], data.draw(cut_up(answer[1]))
    provider = data.draw(st.sampled_from(stream_providers))
    request = ChatRequest(body=dict(CHAT), model=MODEL, stream=True)
    try:
        stream = provider.stream(request, StreamTimer(first_byte=5, idle=5))
        try:
            for item in read_all(stream):
                assert isinstance(item.obj, dict) and json.loads(item.text) == item.obj
        finally:
            stream.close()
    except GatewayError:
        pass  # the translated failure a client gets; any other exception fails the test


@settings(REPRODUCIBLE, max_examples=100)
@given(objects=st.lists(st.builds(lambda text: chunk({"content": text}), st.text()), max_size=5), data=st.data())
def test_upstream_stream_yields_well_formed_chunks_in_order(scripted, stream_providers, objects, data):
    body = b"".join(map(sse.json_frame, objects)) + sse.DONE + b"data: after the end\n\n"
    scripted.status, scripted.pieces = 200, data.draw(cut_up(body))
    stream = data.draw(st.sampled_from(stream_providers)).stream(
        ChatRequest(body=dict(CHAT), model=MODEL, stream=True), StreamTimer(first_byte=5, idle=5)
    )
    try:
        assert [item.obj for item in read_all(stream)] == objects
    finally:
        stream.close()


def test_gateway_relays_any_upstream_stream_as_chunks_or_an_error(make_app, scripted, auth):
    client = make_app(
        LMARENA_BRIDGE_BASE_URL=scripted.url, LMARENA_BRIDGE_MAX_RETRIES=0, GATEWAY_BREAKER_FAILURES=1_000_000
    ).test_client()

    @settings(REPRODUCIBLE, max_examples=60)
    @given(answer=upstream_answers(started=True), data=st.data())
    def check(answer, data):
        scripted.status, scripted.pieces = answer[0], data.draw(cut_up(answer[1]))
        response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth)
        try:
            payload = response.get_data()
        finally:
            response.close()
        if response.status_code != 200:
            assert_openai_error(json.loads(payload))
            return
        events = read_events([payload])
        assert events[-1] == "[DONE]"
        objects = [json.loads(text) for text in events[:-1]]
        assert all(isinstance(obj, dict) for obj in objects)
        errors = [obj for obj in objects if "error" in obj]
        if errors:
            assert errors == objects[-1:]  # an error ends the stream
            assert_openai_error(errors[0])

    check()


@pytest.mark.parametrize(
    ("status", "stream"),
    [
        (500, True),
        (500, False),
        (200, False),
    ],
)
def test_upstream_json_nested_too_deeply_is_a_gateway_error(make_app, scripted, auth, status, stream):
    client = make_app(LMARENA_BRIDGE_BASE_URL=scripted.url, LMARENA_BRIDGE_MAX_RETRIES=0).test_client()
    scripted.status, scripted.pieces = status, [nested(5000)]
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=auth)
    assert response.status_code == 502
    assert_openai_error(response.get_json())


# 3. Request validation


CHAT_FIELDS = [
    "model", "messages", "stream", "temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens",
    "max_completion_tokens", "n", "seed", "top_logprobs", "stop", "user", "logprobs", "tools", "response_format",
    "logit_bias", "stream_options", "tool_choice",
]  # fmt: skip
MESSAGE_FIELDS = ["role", "content", "name", "tool_call_id", "tool_calls", "function_call"]
IMAGE_FIELDS = ["prompt", "model", "n", "size", "response_format", "quality", "style", "user", "background"]

parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "refusal", "video"])},
    optional={"text": awkward, "image_url": st.fixed_dictionaries({}, optional={"url": awkward}) | awkward},
)
messages = st.fixed_dictionaries(
    {"role": st.sampled_from([*ROLES, "wizard"])},
    optional={"content": st.text(max_size=20) | st.lists(parts, max_size=3) | awkward, "tool_call_id": awkward},
)


@st.composite
def mutated(draw, base: dict, fields: list[str], nested_key: str | None = None, nested_fields: tuple = ()) -> dict:
    """Return base with a few fields removed or set to awkward values, unknown fields included."""
    body = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 3))):
        target = body
        keys = fields
        if nested_key and isinstance(body.get(nested_key), list) and body[nested_key] and draw(st.booleans()):
            target, keys = body[nested_key][0], nested_fields
            if not isinstance(target, dict):
                continue
        key = draw(st.sampled_from(keys) | st.text(max_size=8))
        if draw(st.integers(0, 3)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(awkward)
    return body


@st.composite
def chat_bodies(draw) -> dict:
    base = {**CHAT, "stream": draw(st.booleans())}
    if draw(st.booleans()):
        base["messages"] = draw(st.lists(messages, min_size=1, max_size=3))
    return draw(mutated(base, CHAT_FIELDS, "messages", tuple(MESSAGE_FIELDS)))


@st.composite
def image_bodies(draw) -> dict:
    base = {"prompt": draw(st.text(min_size=1, max_size=20)), "model": "nano-banana"}
    base["response_format"] = draw(st.sampled_from(["url", "b64_json"]))
    base["n"] = draw(st.integers(1, 2))
    return draw(mutated(base, IMAGE_FIELDS))


ODD_BODIES = [b"", b"  ", b"null", b"[]", b'"text"', b"NaN", b"-Infinity", b"1" * 5000, b"{", b"\xff\xfe\xfd"]
ODD_BODIES += [b"\xef\xbb\xbf{}", b'{"model": NaN}', '{"prompt": "é"}'.encode("utf-16"), b'{"a":' * 3000]


def request_bodies(valid: st.SearchStrategy[dict]) -> st.SearchStrategy[bytes]:
    """Return raw request bodies: mutations of a valid one, any JSON, junk bytes, odd and deeply nested JSON."""
    return st.one_of(
        valid.map(lambda body: json.dumps(body).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=64),
        st.sampled_from(ODD_BODIES),
        st.integers(1, 5000).map(nested),
    )


@settings(REPRODUCIBLE, max_examples=300)
@given(body=chat_bodies() | st.dictionaries(st.sampled_from(CHAT_FIELDS) | st.text(max_size=8), awkward, max_size=6))
def test_parse_chat_request_returns_or_raises_invalid_request(body):
    try:
        chat = parse_chat_request(body, max_messages=8)
    except InvalidRequestError as error:
        assert error.status_code == 400 and error.param
    else:
        assert chat.model == body["model"] and chat.stream is (body.get("stream") is True)


@settings(REPRODUCIBLE, max_examples=200)
@given(body=image_bodies() | st.dictionaries(st.sampled_from(IMAGE_FIELDS) | st.text(max_size=8), awkward, max_size=6))
def test_parse_image_request_returns_or_raises_invalid_request(body):
    try:
        image = parse_image_request(body, max_n=4)
    except InvalidRequestError as error:
        assert error.status_code == 400 and error.param
    else:
        assert image.prompt == body["prompt"] and 1 <= image.n <= 4


def test_chat_endpoint_answers_any_body_with_success_or_openai_error(client, bridge, auth):
    bridge.chunk_delay = bridge.response_delay = 0

    @settings(REPRODUCIBLE, max_examples=150)
    @given(raw=request_bodies(chat_bodies()))
    def check(raw):
        assert_answer(client.post("/v1/chat/completions", data=raw, content_type="application/json", headers=auth))

    check()


class ImageHost(FakeUpstream):
    """Serves a few bytes as every image, standing in for lmarena's image CDN."""

    def handle(self, h: UpstreamHandler) -> None:
        h.send_body(200, b"\x89PNG\r\n\x1a\n", "image/png")


def test_images_endpoint_answers_any_body_with_success_or_openai_error(make_app, bridge, auth):
    bridge.chunk_delay = bridge.response_delay = 0

    @settings(REPRODUCIBLE, max_examples=100)
    @given(raw=request_bodies(image_bodies()))
    def check(raw):
        response = client.post("/v1/images/generations", data=raw, content_type="application/json", headers=auth)
        # Any model but nano-banana is a text model at the fake bridge, which then answers without an image.
        assert_answer(response, upstream_codes=frozenset({"no_image_returned"}))

    with ImageHost() as host:
        client = make_app(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=host.url.removeprefix("http://")).test_client()
        bridge.image_url = host.url + "/generated/{:04d}.png"
        check()


# 4. Session registration


valid_names = st.from_regex(NAME, fullmatch=True)
# Path traversal, NUL, separators and Unicode look-alikes (one dot leader, fullwidth letters, the Kelvin sign).
TRAVERSAL_NAMES = [
    "..", "../admin", "a/b", "/etc", "%2e%2e", "..%2f", "a\x00b", "a\\b", "\u2024\u2024", "ｓｅｓｓｉｏｎ",
    "\u212aelvin", "ａ", " a", "a\n", "x" * 65, "", "...", "a b", "a?b", "a#b",
]  # fmt: skip
BAD_URLS = [
    "http://[x", "http://[::1", "http://", "ftp://host", "javascript:alert(1)", "http://u:p@host", "http://h/?q",
    "http://exa\nmple.com", "http://host\r\n/v1", "http://ho st", "http://h\t/", "http://h#f", "//host",
]  # fmt: skip
GOOD_URLS = ["http://127.0.0.1:5102", "https://bridge.example/v1", "http://[::1]:80/", "http://h/base/v1/"]
JUNK = {
    "domain": st.text(max_size=20) | st.sampled_from(DOMAINS).map(str.upper) | st.sampled_from(["lmarena.ai.", "x"]),
    "session_name": st.sampled_from(TRAVERSAL_NAMES) | st.text(max_size=70),
    "session_id": st.uuids().map(lambda u: u.urn[4:]) | st.text(min_size=35, max_size=37) | st.just("urn:" + "0" * 32),
    "message_id": st.uuids().map(lambda u: str(u).upper()) | st.text(min_size=36, max_size=36),
    "bridge_base_url": st.sampled_from(BAD_URLS) | st.text(max_size=30).map("http://".__add__) | st.text(max_size=30),
    "models": st.dictionaries(st.text(max_size=8), awkward, max_size=3),
}


def usable_url(url: str) -> bool:
    """Return whether the gateway's HTTP client can open a pool to url (a valid host, no whitespace or controls)."""
    try:
        urllib3.connection_from_url(url).close()
    except ValueError:  # LocationParseError, for a host name that is not valid IDNA
        return False
    return url.isprintable() and not any(c.isspace() for c in url)


@st.composite
def registrations(draw) -> dict:
    """Return a registration body: a valid one with up to three fields removed or made junk."""
    body = {
        "domain": draw(st.sampled_from(DOMAINS)),
        "session_name": draw(valid_names),
        "session_id": str(draw(st.uuids())),
        "message_id": str(draw(st.uuids())),
        "bridge_base_url": draw(st.none() | st.sampled_from(GOOD_URLS)),
        "models": draw(st.none() | st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(JUNK)), max_size=3, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            del body[key]
        else:
            body[key] = draw(JUNK[key] | awkward)
    return body


def test_register_answers_any_fields_and_stores_only_valid_sessions(make_app, admin):
    app = make_app(GATEWAY_CONCURRENT_SESSIONS_LIMIT=1_000_000)
    client = app.test_client()

    @settings(REPRODUCIBLE, max_examples=150)
    @given(body=registrations())
    def check(body):
        response = client.post("/session/register", json=body, headers=admin)
        if response.status_code in (200, 201):
            name = response.get_json()["session"]["session_name"]
            assert name == body["session_name"] and NAME.fullmatch(name) and name.strip(".")
        else:
            assert 400 <= response.status_code < 500
            assert_openai_error(response.get_json())

    check()
    with app.app_context():
        stored = get_store().list()
        assert stored, "the strategy should produce some valid registrations"
        for session in stored:
            assert check_name(session.session_name) == session.session_name
            assert check_domain(session.domain) == session.domain
            assert check_uuid(session.session_id, "session_id") == session.session_id
            assert check_uuid(session.message_id, "message_id") == session.message_id
            assert session.bridge_base_url is None or usable_url(check_base_url(session.bridge_base_url))
            assert check_models(session.models) == session.models


@settings(REPRODUCIBLE, max_examples=300)
@given(
    value=awkward
    | st.sampled_from(TRAVERSAL_NAMES + BAD_URLS + GOOD_URLS)
    | st.text(max_size=40).map("http://".__add__)
    | st.uuids().map(lambda u: u.urn[9:].upper())
)
def test_session_field_checks_return_valid_values_or_raise_invalid_request(value):
    checks = {
        "name": lambda: NAME.fullmatch(check_name(value)) and value.strip("."),
        "uuid": lambda: check_uuid(value, "session_id") == str(uuid.UUID(value)),
        "url": lambda: value in (None, "") or usable_url(check_base_url(value)),
        "models": lambda: check_models(value) == (value or {}),
    }
    for name, check in checks.items():
        try:
            assert check(), name
        except InvalidRequestError as error:
            assert error.status_code == 400 and error.param


@pytest.mark.parametrize("name", TRAVERSAL_NAMES)
def test_register_rejects_traversal_and_lookalike_names(app, client, admin, name):
    body = {"domain": DOMAINS[0], "session_name": name, "session_id": ZERO_ID, "message_id": ZERO_ID}
    response = client.post("/session/register", json=body, headers=admin)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_session_name"
    with app.app_context():
        assert get_store().list() == []


# 5. Request ids


request_ids = st.from_regex(SAFE_REQUEST_ID, fullmatch=True) | st.text() | st.text(min_size=129, max_size=300)
request_ids |= st.sampled_from(["a\r\nSet-Cookie: x=1", "a\nb", "a\rb", "x" * 129, "x" * 128, "", " id", "ｉｄ", "é"])


def test_request_id_is_echoed_when_safe_and_never_splits_headers(client, auth):
    @settings(REPRODUCIBLE, max_examples=200)
    @given(sent=request_ids, path=st.sampled_from(["/v1/models", "/no/such/endpoint"]), key=st.booleans())
    def check(sent, path, key):
        # The test client refuses CR/LF in headers it builds; a raw environ is what a lenient server could pass on.
        native = sent.encode("utf-8").decode("latin-1")
        response = client.get(path, headers=auth if key else {}, environ_overrides={"HTTP_X_REQUEST_ID": native})
        response.close()
        assert response.status_code < 500
        answered = response.headers["X-Request-Id"]
        if SAFE_REQUEST_ID.fullmatch(native):
            assert answered == native
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", answered)
        for name, value in response.headers.items():
            assert not re.search(r"[\r\n\x00]", name + value)
            value.encode("latin-1")  # what a WSGI server must be able to send

    check()
