"""Prove the fake yupp2Api answers exactly like the real one did in the recorded captures, and test scripted faults."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.upstreams import replay
from tests.upstreams.fake_bridge import FakeBridge
from tests.upstreams.fake_yupp import (
    ALL_FAILED,
    DEFAULT_MODELS,
    DEFAULT_REASONING,
    NO_ACCOUNTS,
    NO_MESSAGES,
    FakeYupp,
    clean_model_name,
)
from tests.upstreams.httpserver import Delay, FakeUpstream, Refuse, Stall, Status
from tests.upstreams.replay import CREATED, find_capture, read_pieces

CHUNK_DELAY = 0.02
HANG_SECONDS = 0.3
# The captures were taken with a 0.2 s fake yupp.ai and a 3 s hang: both scale down by the same factor here.
SCALE = CHUNK_DELAY / 0.2
KEY = "sk-yupp-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
RESPONSE_ID = re.compile(rb"chatcmpl-[0-9a-f]{32}")
REPLY_WORDS = ["Hello", " from", " the", " real", " yupp"]
CLEANED = {
    "GPT-4o-mini": "GPT-4o-mini",
    "GPT-4o\n\U0001f4ce": "GPT-4o",
    "Claude Sonnet 4\n\u2600\ufe0f | \U0001f195": "Claude Sonnet 4",
    "DeepSeek R1\n\U0001f9e0": "DeepSeek R1",
}


def normalise(body: bytes) -> bytes:
    """Blank out what differs from run to run: response ids and `created` timestamps."""
    return replay.normalise(body, RESPONSE_ID)


def chat(fake: FakeUpstream, text: str = "Say hello", *, model: str = "GPT-4o-mini", **extra: Any) -> requests.Response:
    """Post one user message to the fake yupp2Api and return the (streamed) response."""
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return requests.post(f"{fake.url}/v1/chat/completions", json=payload, headers=AUTH, stream=True, timeout=5)


def sse_events(body: bytes) -> list[Any]:
    """Return the parsed `data:` payloads of an SSE body ("[DONE]" kept as the string)."""
    frames = [frame.removeprefix(b"data: ") for frame in body.split(b"\n\n") if frame]
    return [frame.decode() if frame == b"[DONE]" else json.loads(frame) for frame in frames]


def deltas(body: bytes) -> list[dict[str, Any]]:
    """Return the `delta` of every chunk in an SSE body."""
    return [event["choices"][0]["delta"] for event in sse_events(body) if isinstance(event, dict) and "id" in event]


@pytest.fixture
def yupp() -> Iterator[FakeYupp]:
    fake = FakeYupp(chunk_delay=CHUNK_DELAY, hang_seconds=HANG_SECONDS, response_delay=0.0).start()
    yield fake
    fake.stop()
    assert not fake.errors


def trip_cooldown(fake: FakeYupp) -> None:
    """Fail as many times as it takes to put the fake's only account in cooldown."""
    for _ in range(fake.cooldown_failures):
        with chat(fake, "[[fake:error]]") as resp:
            assert (resp.status_code, resp.json()) == (503, {"detail": ALL_FAILED})


@pytest.mark.parametrize("name", replay.capture_names("yupp_"))
def test_fake_yupp_replays_capture(yupp: FakeYupp, name: str) -> None:
    capture = find_capture("yupp_", name)
    if name == "yupp_cooldown":
        trip_cooldown(yupp)
    answer = replay.replay(yupp.url, capture)
    sizes = [len(chunk) for _, chunk in answer.pieces]

    assert answer.status == capture.status
    assert answer.headers == list(capture.response_headers.items())
    assert normalise(answer.body) == normalise(capture.body)
    assert sizes == [size for _, size in capture.pieces]
    assert len(set(RESPONSE_ID.findall(answer.body))) == len(set(RESPONSE_ID.findall(capture.body)))
    assert all(abs(int(created) - time.time()) < 60 for _, created in CREATED.findall(answer.body))
    if "content-length" in capture.response_headers:
        assert json.loads(normalise(answer.body)) == json.loads(normalise(capture.body))
    else:
        assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for _, chunk in answer.pieces)
        assert sse_events(normalise(answer.body)) == sse_events(normalise(capture.body))
    # Only a lower bound on timing: the fake must pace its answer like the capture, scaled to test delays. A timed
    # wait may end a hair early on a loaded machine (a first piece paced at 1.2 ms came at 1.19 ms): a millisecond of
    # slack, small beside the captures' gaps.
    for (at, _), (captured_at, _) in zip(answer.pieces, capture.pieces, strict=True):
        assert at - answer.started >= captured_at * SCALE * 0.8 - 0.001
    recorded = yupp.requests[-1]
    assert (recorded.method, recorded.path, recorded.body) == (capture.method, capture.path, capture.request_body)


def test_fake_yupp_models_round_trip_exactly(yupp: FakeYupp) -> None:
    yupp.chunk_delay = 0.0
    resp = requests.get(f"{yupp.url}/v1/models", headers=AUTH, timeout=5)
    assert [(m["id"], m["owned_by"]) for m in resp.json()["data"]] == list(DEFAULT_MODELS.items())
    assert b'"Claude Sonnet 4\\n\xe2\x98\x80\xef\xb8\x8f | \xf0\x9f\x86\x95"' in resp.content
    for model, cleaned in CLEANED.items():
        assert clean_model_name(model) == cleaned
        with chat(yupp, model=model, stream=False) as resp:
            assert resp.json()["model"] == model
        with chat(yupp, model=model) as resp:
            assert {event["model"] for event in sse_events(resp.content) if event != "[DONE]"} == {cleaned}
        assert yupp.requests[-1].json["model"] == model


def test_fake_yupp_reasoning_model_sends_reasoning_first(yupp: FakeYupp) -> None:
    model = "DeepSeek R1\n\U0001f9e0"
    with chat(yupp, model=model, stream=True) as resp:
        got = deltas(resp.content)
    thoughts = [delta["reasoning_content"] for delta in got if "reasoning_content" in delta]
    assert "".join(thoughts) == DEFAULT_REASONING and len(thoughts) >= 2
    assert got[1 : 1 + len(thoughts)] == [{"reasoning_content": text} for text in thoughts]
    assert [delta["content"] for delta in got if "content" in delta] == REPLY_WORDS
    with chat(yupp, model=model, stream=False) as resp:
        message = resp.json()["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "Hello from the real yupp",
        "reasoning_content": DEFAULT_REASONING,
    }


def test_fake_yupp_stream_is_the_default(yupp: FakeYupp) -> None:
    with chat(yupp) as resp:
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        got = deltas(resp.content)
    assert got == [{"role": "assistant"}, *({"content": word} for word in REPLY_WORDS), {}]
    with chat(yupp, stream="false") as resp:  # pydantic's lax bool reads the string
        assert resp.json()["choices"][0]["message"]["reasoning_content"] is None


def test_fake_yupp_cooldown_blocks_chat_but_not_models() -> None:
    with FakeYupp(chunk_delay=0.0, response_delay=0.0, hang_seconds=0.0, cooldown_seconds=0.4) as fake:
        # Broken streams end inside the 200 answer, so yupp2Api never counts them; broken non-streams it does.
        for marker in ("midfail", "hang"):
            with chat(fake, f"[[fake:{marker}]]", stream=True) as resp:
                assert resp.status_code == 200 and {"error": "Response ended prematurely"} in sse_events(resp.content)
        assert fake.failures == 0
        with chat(fake, "[[fake:midfail]]", stream=False) as resp:
            assert (resp.status_code, resp.json()) == (503, {"detail": ALL_FAILED})
        with chat(fake, "ok") as resp:
            assert resp.status_code == 200
        assert fake.failures == 1  # a success does not clear the count
        for stream in (True, False):  # plain 503 JSON even when a stream was asked for
            with chat(fake, "[[fake:error]]", stream=stream) as resp:
                assert (resp.status_code, resp.json()) == (503, {"detail": ALL_FAILED})
        assert fake.failures == 3 and fake.cooling_down

        with chat(fake, "hi", stream=False) as resp:
            assert (resp.status_code, resp.json()) == (503, {"detail": NO_ACCOUNTS})
        with chat(fake, "hi", model="gpt-x") as resp:
            assert (resp.status_code, resp.json()) == (404, {"detail": "Model 'gpt-x' not found."})
        for path, headers in (("/v1/models", AUTH), ("/models", {})):
            assert requests.get(fake.url + path, headers=headers, timeout=5).status_code == 200

        assert fake.wait_until(lambda: not fake.cooling_down, timeout=2.0)
        with chat(fake, "hi", stream=False) as resp:
            assert resp.status_code == 200
        assert fake.failures == 0


def test_fake_yupp_reset_cooldown(yupp: FakeYupp) -> None:
    trip_cooldown(yupp)
    with chat(yupp) as resp:
        assert resp.json() == {"detail": NO_ACCOUNTS}
    yupp.reset_cooldown()
    assert (yupp.failures, yupp.cooling_down) == (0, False)
    with chat(yupp, stream=False) as resp:
        assert resp.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"model": "GPT-4o-mini", "messages": []}, 400, NO_MESSAGES),
        ({"model": "gpt-x", "messages": []}, 404, "Model 'gpt-x' not found."),
        ({}, 422, [("missing", ["body", "model"]), ("missing", ["body", "messages"])]),
        (
            {"model": 5, "messages": "x", "stream": "maybe"},
            422,
            [
                ("string_type", ["body", "model"]),
                ("list_type", ["body", "messages"]),
                ("bool_parsing", ["body", "stream"]),
            ],
        ),
        (
            {"model": "GPT-4o-mini", "messages": [1, {"role": "user"}]},
            422,
            [
                ("model_attributes_type", ["body", "messages", 0]),
                ("missing", ["body", "messages", 1, "content"]),
            ],
        ),
        ([1], 422, [("model_attributes_type", ["body"])]),
    ],
)
def test_fake_yupp_rejects_bad_bodies(yupp: FakeYupp, body: Any, status: int, detail: Any) -> None:
    resp = requests.post(f"{yupp.url}/v1/chat/completions", json=body, headers=AUTH, timeout=5)
    assert resp.status_code == status
    got = resp.json()["detail"]
    if isinstance(detail, str):
        assert got == detail
    else:
        assert [(error["type"], error["loc"]) for error in got] == detail
        assert all(error["url"] == "https://errors.pydantic.dev/2.5/v/" + error["type"] for error in got)


def test_fake_yupp_checks_json_before_key_and_key_before_fields(yupp: FakeYupp) -> None:
    url = f"{yupp.url}/v1/chat/completions"
    resp = requests.post(url, data=b"{bad", headers={"Content-Type": "application/json"}, timeout=5)
    assert resp.status_code == 422
    assert resp.json()["detail"][0] == {
        "type": "json_invalid",
        "loc": ["body", 1],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": "Expecting property name enclosed in double quotes"},
    }
    resp = requests.post(url, json={}, headers={"Authorization": "Basic abc"}, timeout=5)
    assert (resp.status_code, resp.headers["www-authenticate"]) == (401, "Bearer")


def test_fake_yupp_without_api_key_skips_auth() -> None:
    with FakeYupp(api_key=None, chunk_delay=0.0, response_delay=0.0) as fake:
        assert requests.get(f"{fake.url}/v1/models", timeout=5).status_code == 200
        payload = {"model": "GPT-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        resp = requests.post(f"{fake.url}/v1/chat/completions", json=payload, timeout=5)
        assert resp.json()["choices"][0]["message"]["content"] == "Hello from the real yupp"


@pytest.mark.parametrize("stream", [True, False])
def test_fake_yupp_drop_cuts_the_connection(yupp: FakeYupp, stream: bool) -> None:
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError), chat(yupp, "[[fake:drop]]", stream=stream) as resp:
        for data in resp.iter_content(chunk_size=None):
            received += data
    if stream:
        assert b'"Hello"' in received and b'" from"' in received and b"[DONE]" not in received
    assert yupp.wait_until(lambda: yupp.open_streams == 0, timeout=1.0)


def test_fake_yupp_other_markers(yupp: FakeYupp) -> None:
    with chat(yupp, "[[fake:garbage]]") as resp:
        assert resp.content == b"data: {not json\n\ndata: [DONE]\n\n"
    with chat(yupp, "see [[fake:status:429]]") as resp:
        assert (resp.status_code, resp.json()) == (429, {"detail": "fake status 429"})
    with chat(yupp, "[[fake:empty]]", stream=False) as resp:
        assert resp.json()["choices"][0]["message"]["content"] == ""
    with chat(yupp, "[[fake:badrequest]]", stream=True) as resp:
        assert resp.status_code == 400 and "Invalid model selection" in resp.json()["detail"]
    assert yupp.failures == 0


def test_fake_yupp_slow_stream_records_client_disconnect(yupp: FakeYupp) -> None:
    with chat(yupp, "[[fake:slow]]") as resp:
        chunks = resp.iter_content(chunk_size=None)
        assert b'"role"' in next(chunks)
        assert yupp.open_streams == 1
    assert yupp.wait_until(lambda: yupp.disconnects, timeout=1.0)
    assert yupp.wait_until(lambda: yupp.open_streams == 0, timeout=1.0)


def test_fake_yupp_first_chunk_delay_holds_the_body(yupp: FakeYupp) -> None:
    yupp.first_chunk_delay = 0.2
    started = time.monotonic()
    with chat(yupp) as resp:
        headers_at = time.monotonic()
        first_at, _ = next(read_pieces(resp))
    assert headers_at - started < 0.15 <= first_at - started


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/v1/chat/completions", 405, "Method Not Allowed"),
        ("POST", "/models", 405, "Method Not Allowed"),
        ("GET", "/health", 404, "Not Found"),
    ],
)
def test_fake_yupp_routing_errors(yupp: FakeYupp, method: str, path: str, status: int, detail: str) -> None:
    resp = requests.request(method, yupp.url + path, timeout=5)
    assert (resp.status_code, resp.content) == (status, json.dumps({"detail": detail}, separators=(",", ":")).encode())


# Scripted faults work the same on every fake: each case below runs against both.


@dataclass(frozen=True)
class Target:
    """How to talk to one kind of fake upstream."""

    make: Callable[[], FakeUpstream]
    key: str
    model: str

    def post(self, fake: FakeUpstream, stream: bool, text: str = "hi", timeout: float = 5) -> requests.Response:
        """Post one chat request (stream stated explicitly) and return the streamed response."""
        payload = {"model": self.model, "messages": [{"role": "user", "content": text}], "stream": stream}
        headers = {"Authorization": f"Bearer {self.key}"}
        return requests.post(
            f"{fake.url}/v1/chat/completions", json=payload, headers=headers, stream=True, timeout=timeout
        )


TARGETS = {
    "bridge": Target(lambda: FakeBridge(chunk_delay=0.01, response_delay=0.0), "sk-lmab-test", "gpt-5"),
    "yupp": Target(lambda: FakeYupp(chunk_delay=0.01, response_delay=0.0), KEY, "GPT-4o-mini"),
}


@pytest.fixture(params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> Iterator[tuple[Target, FakeUpstream]]:
    spec = TARGETS[request.param]
    fake = spec.make().start()
    yield spec, fake
    fake.stop()
    assert not fake.errors


def test_script_status_answers_before_normal_handling(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    fake.script(Status(429, retry_after=2), Status(503, body={"error": "busy"}, headers={"x-fake": "1"}))
    with spec.post(fake, stream=True) as resp:
        assert (resp.status_code, resp.headers["retry-after"], resp.content) == (429, "2", b'{"detail":"scripted 429"}')
    with spec.post(fake, stream=False) as resp:
        assert (resp.status_code, resp.json(), resp.headers["x-fake"]) == (503, {"error": "busy"}, "1")
        assert "retry-after" not in resp.headers
    with spec.post(fake, stream=False) as resp:
        assert resp.status_code == 200
    assert fake.served == ["status:429", "status:503", None]
    assert [record.served for record in fake.requests] == fake.served and fake.pending_steps == []


def test_script_refuse_closes_without_answer(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    fake.script(Refuse())
    with pytest.raises(requests.exceptions.ConnectionError):
        spec.post(fake, stream=False)
    with spec.post(fake, stream=False) as resp:
        assert resp.status_code == 200
    assert fake.served == ["refuse", None]


def test_script_delay_then_normal_answer(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    fake.script(Delay(0.3))
    started = time.monotonic()
    with spec.post(fake, stream=False) as resp:
        assert resp.status_code == 200 and "Hello from the real" in resp.json()["choices"][0]["message"]["content"]
    assert time.monotonic() - started >= 0.3
    assert fake.served == ["delay"]


def test_script_delay_notices_client_timeout(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    fake.script(Delay(5.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        spec.post(fake, stream=False, timeout=0.1)
    assert fake.wait_until(lambda: fake.disconnects, timeout=1.0)


def test_script_stall_goes_silent_mid_stream(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    fake.script(Stall(after_chunks=2, seconds=0.3))
    with spec.post(fake, stream=True) as resp:
        pieces = list(read_pieces(resp))
    gaps = [later - earlier for (earlier, _), (later, _) in zip(pieces, pieces[1:], strict=False)]
    assert gaps[1] >= 0.3 and max(gaps[:1] + gaps[2:]) < 0.25
    assert pieces[-1][1].endswith(b"data: [DONE]\n\n")
    assert fake.served == ["stall"]


def test_script_stall_past_the_end_holds_the_body_end(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    fake.script(Stall(after_chunks=99, seconds=0.3))
    started = time.monotonic()
    with spec.post(fake, stream=True) as resp:
        pieces = list(read_pieces(resp))
    ended = time.monotonic()
    assert pieces[-1][1].endswith(b"data: [DONE]\n\n")
    assert pieces[-1][0] - started < 0.25 and ended - started >= 0.3


def test_script_path_filter(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    headers = {"Authorization": f"Bearer {spec.key}"}
    fake.script(Status(502), path="/v1/models")
    fake.script(Status(500), path=None)
    with spec.post(fake, stream=False) as resp:
        assert resp.status_code == 500  # the any-path step, not the one waiting for /v1/models
    assert requests.get(f"{fake.url}/v1/models", headers=headers, timeout=5).status_code == 502
    assert requests.get(f"{fake.url}/v1/models", headers=headers, timeout=5).status_code == 200
    assert fake.served == ["status:500", "status:502", None]


def test_script_steps_are_each_served_once_under_concurrency(target: tuple[Target, FakeUpstream]) -> None:
    spec, fake = target
    codes = list(range(500, 508))
    fake.script(*(Status(code) for code in codes))
    barrier = threading.Barrier(len(codes))
    got: list[int] = []

    def one() -> None:
        barrier.wait(timeout=5)
        with spec.post(fake, stream=False) as resp:
            got.append(resp.status_code)

    threads = [threading.Thread(target=one) for _ in codes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(got) == codes
    assert sorted(fake.served) == [f"status:{code}" for code in codes]
    with spec.post(fake, stream=False) as resp:
        assert resp.status_code == 200


def test_script_rejects_what_is_not_a_step() -> None:
    fake = FakeUpstream()
    with pytest.raises(TypeError):
        fake.script(Status(500), Refuse)  # type: ignore[arg-type]
    assert fake.pending_steps == []
