"""Upstream faults on both providers, streamed or not: each ends in a clean OpenAI error, in time, and frees the worker.

Cases test_streaming.py and test_routing.py already hold are left to them: a refused port and a slow first byte on
yupp2Api without streaming, a stall after content and garbage SSE on both providers' streams. Those stream faults
still run here in the many-faults test, which checks that nothing is left behind.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from app.config import ConfigError, load_settings
from tests.helpers.sseclient_raw import RawStream, stream_chat
from tests.upstreams.fake_bridge import DEFAULT_REPLY as BRIDGE_REPLY
from tests.upstreams.fake_yupp import DEFAULT_REPLY as YUPP_REPLY
from tests.upstreams.httpserver import FakeUpstream, wait_until
from tests.upstreams.script import Delay, Reset, Stall, Status

FIRST_BYTE = 1.0  # <provider>_TIMEOUT in every gateway here
IDLE = 0.5  # <provider>_IDLE_TIMEOUT
MARGIN = 1.5  # how much later than its timeout an error may reach the client
CAP = 64 * 1024  # GATEWAY_MAX_UPSTREAM_BYTES
HUGE = "x" * (2 * CAP)  # one word: one content chunk, one SSE event
TCP_TABLE = Path("/proc/net/tcp")


@dataclass(frozen=True)
class Target:
    """One provider as a client picks it, and the fake upstream behind it."""

    fake: str
    selector: str
    prefix: str
    model: str
    reply: str


BRIDGE = Target("bridge", "bridge_direct", "LMARENA_BRIDGE", "gpt-5", BRIDGE_REPLY)
YUPP = Target("yupp", "yupp2api", "YUPP2API", "GPT-4o-mini", YUPP_REPLY)
TARGETS = {"bridge": BRIDGE, "yupp": YUPP}


def arm(fault: str, fake: FakeUpstream, stream: bool) -> str:
    """Make the fake fail the next chat request with fault; return the user message to send."""
    if fault == "slow_first_byte":
        fake.script(Delay(5))
    elif fault == "stall":
        # Streamed: silence after content. Not streamed: the head and half the body, then silence.
        fake.script(Stall(after_chunks=2, seconds=5) if stream else Reset(seconds=5))
    elif fault == "reset":
        # Streamed, after the first content (0.1 s for the gateway to relay it); not streamed, mid-body.
        fake.script(Reset(after_chunks=2, seconds=0.1) if stream else Reset())
    elif fault == "huge":
        fake.reply = "Hello " + HUGE
    elif fault == "huge_gzip":
        # A small Content-Length that inflates past the cap: only counting what is read catches it.
        fake.script(Status(200, body=gzip.compress(b" " * (4 * CAP)), headers={"content-encoding": "gzip"}))
    elif fault == "deep_json":
        fake.script(Status(200, body=b"[" * 50_000))  # valid so far, but nested past what Python's parser takes
    elif fault in ("garbage", "invalid_json"):
        return "hi [[fake:garbage]]"
    elif fault == "drop":
        return "hi [[fake:drop]]"
    return "hi"


# fault: (status, code) without streaming, and streamed (200: an error chunk after content, then [DONE]).
EXPECTED = {
    "refused": ((502, "upstream_unreachable"), (502, "upstream_unreachable")),
    "slow_first_byte": ((504, "upstream_timeout"), (504, "upstream_timeout")),
    "stall": ((504, "upstream_timeout"), (200, "upstream_idle_timeout")),
    "reset": ((502, "upstream_stream_broken"), (200, "upstream_stream_broken")),
    "invalid_json": ((502, "upstream_error"), None),
    "deep_json": ((502, "upstream_error"), None),
    "huge": ((502, "upstream_response_too_large"), (200, "upstream_response_too_large")),
    "huge_gzip": ((502, "upstream_response_too_large"), None),
}

CASES = [
    ("refused", "bridge", False),
    ("refused", "bridge", True),
    ("refused", "yupp", True),
    ("slow_first_byte", "bridge", False),
    ("slow_first_byte", "bridge", True),
    ("slow_first_byte", "yupp", True),
    ("stall", "bridge", False),
    ("stall", "yupp", False),
    *((fault, fake, stream) for fault in ("reset", "huge") for fake in TARGETS for stream in (False, True)),
    *((fault, fake, False) for fault in ("invalid_json", "deep_json", "huge_gzip") for fake in TARGETS),
]


def settings(with_yupp: dict, **overrides) -> dict:
    """Return settings for both providers with short timeouts, no retries and a small answer cap."""
    result = {**with_yupp, "GATEWAY_MAX_UPSTREAM_BYTES": CAP, "GATEWAY_SSE_KEEPALIVE_SECONDS": 3}
    for target in TARGETS.values():
        result[f"{target.prefix}_TIMEOUT"] = FIRST_BYTE
        result[f"{target.prefix}_IDLE_TIMEOUT"] = IDLE
        result[f"{target.prefix}_MAX_RETRIES"] = 0
    return {**result, **overrides}


def port_of(fake: FakeUpstream) -> int:
    return urlsplit(fake.url).port


def held_connections(port: int) -> int:
    """Return how many client-side TCP connections to 127.0.0.1:port are still open (established or half-closed)."""
    remote = f"0100007F:{port:04X}"
    with TCP_TABLE.open() as table:
        next(table)
        # 01 ESTABLISHED, 08 CLOSE_WAIT: the peer hung up but this side never closed its socket.
        return sum(1 for line in table if line.split()[2:4] in ([remote, "01"], [remote, "08"]))


def error_code(body: dict) -> str:
    """Return the code of an OpenAI error body, checking its shape."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]["code"]


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def stream_raw(server, target: Target, text: str, auth: dict) -> RawStream:
    body = {"model": target.model, "messages": messages(text), "stream": True}
    return stream_chat(server.url, body, {**auth, "X-Provider": target.selector})


def outcome(result: RawStream) -> tuple[int, str]:
    """Return (status, code) of a failed stream: its HTTP error, or 200 and its error chunk followed by [DONE]."""
    if result.status != 200:
        assert result.headers["content-type"] == "application/json"
        return result.status, error_code(json.loads(result.raw_body))
    assert result.data[-1] == "[DONE]"
    return 200, error_code(result.json_frames()[-1])


def faulted(client: openai.OpenAI, server, target: Target, text: str, stream: bool, auth: dict) -> tuple[int, str]:
    """Send the request a fault is armed for; return the status and error code it ended with."""
    if stream:
        return outcome(stream_raw(server, target, text, auth))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=target.model, messages=messages(text), extra_headers={"X-Provider": target.selector}
        )
    return caught.value.status_code, error_code(caught.value.response.json())


def normal(client: openai.OpenAI, target: Target, stream: bool) -> str:
    """Ask target for an ordinary answer and return its text."""
    extra = {"extra_headers": {"X-Provider": target.selector}}
    if not stream:
        completion = client.chat.completions.create(model=target.model, messages=messages("hi"), **extra)
        return completion.choices[0].message.content
    chunks = client.chat.completions.create(model=target.model, messages=messages("hi"), stream=True, **extra)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def assert_released(fake: FakeUpstream, port: int, pooled: int = 0) -> None:
    """Check the fault left nothing running: no upstream stream, no upstream connection held."""
    assert wait_until(lambda: fake.open_streams == 0, 2), "the upstream is still streaming"
    if TCP_TABLE.exists():
        assert wait_until(lambda: held_connections(port) <= pooled, 2), f"{held_connections(port)} connections held"


@pytest.fixture
def closed_port():
    """Return a loopback port that refuses connections (bound, never listening, so nothing else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "provider", "stream"), CASES, ids=lambda v: {True: "stream", False: "json"}.get(v, v)
)
def test_fault_ends_in_clean_error_and_frees_the_worker(
    fault, provider, stream, serve, with_yupp, bridge, yupp, closed_port, openai_for, auth
):
    fakes = {"bridge": bridge, "yupp": yupp}
    target = TARGETS[provider]
    fake = fakes[provider]
    overrides, port = {}, port_of(fake)
    if fault == "refused":
        port = closed_port
        overrides[f"{target.prefix}_BASE_URL"] = f"http://127.0.0.1:{closed_port}"
    server = serve(**settings(with_yupp, **overrides))
    client = openai_for(server)
    reply = fake.reply
    text = arm(fault, fake, stream)

    started = time.monotonic()
    got = faulted(client, server, target, text, stream, auth)
    elapsed = time.monotonic() - started
    fake.reply = reply

    assert got == EXPECTED[fault][stream]
    assert elapsed < FIRST_BYTE + MARGIN
    # A body read to its end (bad JSON; a few gzip bytes that inflate too far) leaves a clean connection in the pool.
    # One cut short, late or broken is closed with its connection.
    assert_released(fake, port, pooled=1 if fault in ("invalid_json", "deep_json", "huge_gzip") else 0)
    # The same server answers right away: a refused provider's partner, else the provider that failed.
    healthy = (YUPP if target is BRIDGE else BRIDGE) if fault == "refused" else target
    assert normal(client, healthy, stream) == healthy.reply
    if not stream and TCP_TABLE.exists():
        # That answer's connection stays pooled, and it is the only one: the faulted request left none behind.
        assert held_connections(port_of(fakes[healthy.fake])) == 1


STREAM_FAULTS = ("reset", "stall", "garbage", "huge", "drop")


@pytest.mark.slow
def test_many_faulted_streams_leave_the_server_answering_concurrent_requests(
    serve, with_yupp, bridge, yupp, openai_for, auth
):
    fakes = {"bridge": bridge, "yupp": yupp}
    # Consecutive failures would open the circuit and turn every later fault into a quick circuit_open.
    server = serve(**settings(with_yupp, GATEWAY_BREAKER_FAILURES=1000))
    client = openai_for(server)
    for target in TARGETS.values():
        assert normal(client, target, True) == target.reply  # pools, threads and caches exist before counting
    threads_before = threading.active_count()

    codes = []
    for number in range(20):
        target = (BRIDGE, YUPP)[number % 2]
        fake = fakes[target.fake]
        text = arm(STREAM_FAULTS[number // 2 % len(STREAM_FAULTS)], fake, stream=True)
        started = time.monotonic()
        result = stream_raw(server, target, text, auth)
        assert time.monotonic() - started < FIRST_BYTE + MARGIN
        fake.reply = target.reply
        codes.append(outcome(result)[1])

    assert len(set(codes)) >= 4, codes
    for fake in fakes.values():
        assert_released(fake, port_of(fake), pooled=1)
    assert wait_until(lambda: threading.active_count() <= threads_before + 2, 2), threading.enumerate()

    asks = [(target, stream) for target in TARGETS.values() for stream in (False, True)] * 2
    with ThreadPoolExecutor(len(asks)) as pool:
        answers = [pool.submit(normal, client, target, stream) for target, stream in asks]
        assert [answer.result(timeout=10) for answer in answers] == [target.reply for target, _ in asks]


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS)
def test_oversize_first_event_is_a_502_and_not_retried(serve, with_yupp, bridge, yupp, auth, target):
    fake = {"bridge": bridge, "yupp": yupp}[target.fake]
    server = serve(**settings(with_yupp, **{f"{target.prefix}_MAX_RETRIES": 1}))
    fake.reply = HUGE
    assert outcome(stream_raw(server, target, "hi", auth)) == (502, "upstream_response_too_large")
    assert len([r for r in fake.requests if r.path == "/v1/chat/completions"]) == 1


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS)
def test_stream_longer_than_the_cap_is_relayed_whole(serve, with_yupp, bridge, yupp, auth, target):
    fake = {"bridge": bridge, "yupp": yupp}[target.fake]
    fake.chunk_delay = 0
    fake.reply = " ".join(f"word{n}" for n in range(1500))
    result = stream_raw(serve(**settings(with_yupp)), target, "hi", auth)
    assert result.status == 200 and result.data[-1] == "[DONE]"
    assert sum(len(frame) for _, frame in result.frames) > 2 * CAP
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in result.json_frames()) == fake.reply


def test_max_upstream_bytes_has_a_floor():
    assert load_settings(environ={}, dotenv_path=None)["GATEWAY_MAX_UPSTREAM_BYTES"] == 32 * 1024 * 1024
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"GATEWAY_MAX_UPSTREAM_BYTES": "1024"}, dotenv_path=None)
    assert str(caught.value).startswith("GATEWAY_MAX_UPSTREAM_BYTES=") and "65536" in str(caught.value)


class RawAnswers(FakeUpstream):
    """An upstream that lists the bridge's model, then answers every chat with `answer`, byte for byte."""

    server_header = "uvicorn"

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer

    def handle(self, h) -> None:
        if h.route_path == "/v1/models":
            h.send_json(200, {"object": "list", "data": [{"id": BRIDGE.model, "object": "model", "created": 0}]})
        else:
            h.write(self.answer)
            h.drop_connection()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_garbage_status_line_is_a_502_and_retried(serve, auth, stream):
    # What http.client cannot parse as an answer (not HTTP at all) is the upstream's fault, like a reset.
    with RawAnswers(b"garbage\r\n\r\n") as upstream:
        server = serve(LMARENA_BRIDGE_BASE_URL=upstream.url, LMARENA_BRIDGE_MAX_RETRIES=1)
        result = stream_chat(server.url, {"model": BRIDGE.model, "messages": messages("hi"), "stream": stream}, auth)
        assert result.status == 502
        assert error_code(json.loads(result.raw_body)) in ("upstream_stream_broken", "upstream_unreachable")
        assert len([r for r in upstream.requests if r.path == "/v1/chat/completions"]) == 2


def test_a_failed_answer_head_gives_its_pool_slot_back_once():
    from app.providers.transport import UpstreamClient

    with RawAnswers(b"") as upstream:  # accepts the request, then hangs up without a word
        client = UpstreamClient("Upstream", upstream.url, connect_timeout=2, read_timeout=2, pool_size=2)
        free = client.pool.pool.qsize()
        exchange = client.send_stream("/v1/chat/completions", {"model": "m"}, None)
        assert client.pool.pool.qsize() == free - 1
        assert exchange.ready(2)
        with pytest.raises(Exception) as caught:
            exchange.head(2, 2)
        assert getattr(caught.value, "code", None) == "upstream_stream_broken"
        exchange.drop()  # what the stream's close() does after a failure: the slot must not go back twice
        assert client.pool.pool.qsize() == free
        client.close()
