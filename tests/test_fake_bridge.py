"""Prove the fake LMArenaBridge answers exactly like the real one did in the recorded captures."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import requests

from tests.upstreams import replay
from tests.upstreams.fake_bridge import NO_BROWSER, TOO_LARGE, WAITING_FOR_REFRESH, FakeBridge
from tests.upstreams.replay import CREATED, find_capture

CHUNK_DELAY = 0.02
HANG_SECONDS = 0.3
# The captures were taken with a 0.2 s fake browser and a 3 s stream timeout.
CAPTURED_CHUNK_DELAY = 0.2
CAPTURED_HANG_SECONDS = 3
AUTH = {"Authorization": "Bearer sk-lmab-test"}
CAPTURE_FLAGS = {
    "lmab_no_browser": {"no_browser": True},
    "lmab_no_browser_stream": {"no_browser": True},
    "lmab_waiting_for_refresh": {"waiting_for_refresh": True},
}
RESPONSE_ID = re.compile(rb"chatcmpl-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def normalise(body: bytes) -> bytes:
    """Blank out what differs from run to run: response ids and `created` timestamps."""
    return replay.normalise(body, RESPONSE_ID)


def chat(bridge: FakeBridge, text: str | list[dict[str, str]], **extra: object) -> requests.Response:
    """Post one user message to the fake bridge and return the (streamed) response."""
    payload = {"model": "gpt-5", "messages": [{"role": "user", "content": text}], **extra}
    return requests.post(f"{bridge.url}/v1/chat/completions", json=payload, headers=AUTH, stream=True, timeout=5)


@pytest.fixture
def bridge() -> Iterator[FakeBridge]:
    fake = FakeBridge(chunk_delay=CHUNK_DELAY, hang_seconds=HANG_SECONDS).start()
    yield fake
    fake.stop()
    assert not fake.errors


@pytest.mark.parametrize("name", replay.capture_names("lmab_"))
def test_fake_bridge_replays_capture(bridge: FakeBridge, name: str) -> None:
    capture = find_capture("lmab_", name)
    for attr, value in CAPTURE_FLAGS.get(name, {}).items():
        setattr(bridge, attr, value)
    answer = replay.replay(bridge.url, capture)
    started, pieces, body = answer.started, answer.pieces, answer.body
    expected = capture.body.replace(b"after 3 seconds", f"after {int(HANG_SECONDS)} seconds".encode())

    assert answer.status == capture.status
    assert answer.headers == list(capture.response_headers.items())
    assert normalise(body) == normalise(expected)
    assert [len(chunk) for _, chunk in pieces] == [size for _, size in capture.pieces]
    assert len(set(RESPONSE_ID.findall(body))) == len(set(RESPONSE_ID.findall(capture.body)))
    assert all(abs(int(created) - time.time()) < 60 for _, created in CREATED.findall(body))
    if "content-length" in capture.response_headers:
        assert json.loads(normalise(body)) == json.loads(normalise(expected))
    else:
        assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for _, chunk in pieces)
        # Only a lower bound on timing: the fake must pace chunks like the capture, scaled to test delays.
        scale = HANG_SECONDS / CAPTURED_HANG_SECONDS if "hang" in name else CHUNK_DELAY / CAPTURED_CHUNK_DELAY
        for (at, _), (captured_at, _) in zip(pieces, capture.pieces, strict=True):
            assert at - started >= captured_at * scale * 0.8
    recorded = bridge.requests[-1]
    assert (recorded.method, recorded.path, recorded.body) == (capture.method, capture.path, capture.request_body)


@pytest.mark.parametrize("stream", [True, False])
def test_fake_bridge_drop_cuts_the_connection(bridge: FakeBridge, stream: bool) -> None:
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError), chat(bridge, "[[fake:drop]]", stream=stream) as resp:
        for data in resp.iter_content(chunk_size=None):
            received += data
    if stream:
        assert b'"Hello"' in received and b'" from"' in received and b"[DONE]" not in received
    assert bridge.wait_until(lambda: bridge.open_streams == 0, timeout=1.0)


def test_fake_bridge_garbage_stream(bridge: FakeBridge) -> None:
    with chat(bridge, "[[fake:garbage]]", stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert resp.content == b"data: {not json\n\ndata: [DONE]\n\n"


def test_fake_bridge_slow_stream_records_client_disconnect(bridge: FakeBridge) -> None:
    with chat(bridge, "[[fake:slow]]", stream=True) as resp:
        # Keep the iterator: dropping it mid-body makes urllib3 close the connection there and then.
        chunks = resp.iter_content(chunk_size=None)
        assert b'" tick"' in next(chunks)
        assert bridge.open_streams == 1
    closed_at = time.monotonic()
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=1.0)
    assert bridge.disconnects[0].path == "/v1/chat/completions"
    assert bridge.disconnects[0].at - closed_at < 1.0
    assert bridge.wait_until(lambda: bridge.open_streams == 0, timeout=1.0)


def test_fake_bridge_headers_delay_notices_client_timeout(bridge: FakeBridge) -> None:
    bridge.headers_delay = 5.0
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{bridge.url}/v1/chat/completions", json={"model": "gpt-5"}, headers=AUTH, timeout=0.1)
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=1.0)


def test_fake_bridge_stop_ends_open_stream_promptly(bridge: FakeBridge) -> None:
    with chat(bridge, "[[fake:slow]]", stream=True) as resp:
        chunks = resp.iter_content(chunk_size=None)
        next(chunks)
        started = time.monotonic()
        bridge.stop()
        assert time.monotonic() - started < 1.0
        assert bridge.open_streams == 0 and not bridge.disconnects
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for _ in chunks:
                pass


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("flag", "detail"), [("no_browser", NO_BROWSER), ("waiting_for_refresh", WAITING_FOR_REFRESH)])
def test_fake_bridge_flags_answer_503(bridge: FakeBridge, flag: str, detail: str, stream: bool) -> None:
    setattr(bridge, flag, True)
    with chat(bridge, "hi", stream=stream) as resp:
        assert (resp.status_code, resp.json()) == (503, {"detail": detail})
    setattr(bridge, flag, False)
    with chat(bridge, "hi", stream=stream) as resp:
        assert resp.status_code == 200
        assert "Hello from the real bridge" in resp.text or b"data: [DONE]" in resp.content


def test_fake_bridge_records_forwarded_body(bridge: FakeBridge) -> None:
    before = time.monotonic()
    ids = {"session_id": "s-1", "message_id": "m-1"}
    with chat(bridge, "hi", stream=False, **ids) as resp:
        assert resp.json()["choices"][0]["message"]["content"] == "Hello from the real bridge"
    (recorded,) = bridge.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["authorization"] == AUTH["Authorization"]
    assert recorded.json["stream"] is False and {k: recorded.json[k] for k in ids} == ids
    assert json.loads(recorded.body) == recorded.json
    assert before <= recorded.received_at <= time.monotonic()


@pytest.mark.parametrize("code", [429, 502])
def test_fake_bridge_status_marker(bridge: FakeBridge, code: int) -> None:
    parts = [{"type": "text", "text": f"see [[fake:status:{code}]]"}]
    with chat(bridge, parts) as resp:
        assert (resp.status_code, resp.json()) == (code, {"detail": f"fake status {code}"})


def test_fake_bridge_attachment_too_large(bridge: FakeBridge) -> None:
    with chat(bridge, "[[fake:toolarge]]") as resp:
        assert resp.status_code == 413
        assert resp.json()["error"] == {
            "message": f"[LMArena Bridge Error]: {TOO_LARGE}",
            "type": "bridge_error",
            "code": "attachment_too_large",
        }
    with chat(bridge, "[[fake:toolarge]]", stream=True) as resp:
        assert resp.status_code == 200 and f"[LMArena Bridge Error]: {TOO_LARGE}" in resp.text


def test_fake_bridge_image_model_numbers_images(bridge: FakeBridge) -> None:
    payload = {"model": "nano-banana", "messages": [{"role": "user", "content": "a cat"}], "stream": False}
    contents = []
    for _ in range(2):
        resp = requests.post(f"{bridge.url}/v1/chat/completions", json=payload, headers=AUTH, timeout=5)
        contents.append(resp.json()["choices"][0]["message"]["content"])
    assert contents == [f"![Image](https://fake-lmarena.invalid/generated/fake-image-000{n}.png)" for n in (1, 2)]


def test_fake_bridge_models_empty_and_overridden() -> None:
    with FakeBridge(models={}, api_key=None) as fake:
        resp = requests.get(f"{fake.url}/v1/models", timeout=5)
        assert (resp.status_code, resp.json()) == (404, {"error": "模型列表为空或 'models.json' 未找到。"})
        fake.models = {"gpt-5": "x"}
        fake.models_status = 502
        assert requests.get(f"{fake.url}/v1/models", timeout=5).status_code == 502
        fake.models_status = None
        assert [m["id"] for m in requests.get(f"{fake.url}/v1/models", timeout=5).json()["data"]] == ["gpt-5"]
        without_key = requests.post(f"{fake.url}/v1/chat/completions", json={"model": "gpt-5"}, timeout=5)
        assert without_key.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "detail"),
    [
        ("GET", "/v1/chat/completions", 405, "Method Not Allowed"),
        ("POST", "/v1/models", 405, "Method Not Allowed"),
        ("GET", "/health", 404, "Not Found"),
        ("POST", "/v1/images/generations", 404, "Not Found"),
    ],
)
def test_fake_bridge_routing_errors(bridge: FakeBridge, method: str, path: str, status: int, detail: str) -> None:
    resp = requests.request(method, bridge.url + path, timeout=5)
    assert (resp.status_code, resp.content) == (status, json.dumps({"detail": detail}, separators=(",", ":")).encode())
