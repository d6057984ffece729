"""SSE relay at the byte level: headers, keep-alives, client disconnects and upstream faults mid-stream."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.helpers.sseclient_raw import open_stream, read_frames, stream_chat
from tests.upstreams.httpserver import FakeUpstream
from tests.upstreams.script import Stall


def _body(text: str = "Say hello", **extra) -> dict:
    return {"model": "gpt-5", "messages": [{"role": "user", "content": text}], "stream": True, **extra}


def test_stream_sends_unbuffered_sse_headers_and_done(live, auth):
    result = stream_chat(live.url, _body(), auth)
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert result.headers["x-accel-buffering"] == "no"
    assert "no-cache" in result.headers["cache-control"]
    assert "content-length" not in result.headers
    assert result.headers["x-gateway-provider"] == "lmarena_bridge"  # content came within the first keep-alive wait
    assert result.data[-1] == "[DONE]"
    assert all(frame.endswith(b"\n\n") for _, frame in result.frames)


def test_stream_passes_upstream_chunks_through_unchanged(live, auth, bridge):
    result = stream_chat(live.url, _body(), auth)
    contents = [c["choices"][0]["delta"].get("content") for c in result.json_frames()]
    assert contents == ["", "Hello", " from", " the", " real", " bridge", None]
    # Upstream chunk text is relayed as received (key order and spacing included), not re-encoded.
    assert result.data[1].startswith('{"id": "chatcmpl-')


@pytest.mark.slow
def test_stream_sends_keepalives_while_waiting_for_first_token(live, auth, bridge):
    bridge.first_chunk_delay = 2.6  # keep-alive interval is 1 s in the test app
    result = stream_chat(live.url, _body(), auth)
    first_data = next(i for i, (_, frame) in enumerate(result.frames) if frame.startswith(b"data: "))
    assert len([f for _, f in result.frames[:first_data] if f == b": keep-alive\n\n"]) >= 2
    # Its headers went out with the first keep-alive, before the bridge answered: they cannot name it (README).
    assert "x-gateway-provider" not in result.headers
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in result.json_frames()) == (
        "Hello from the real bridge"
    )



@pytest.mark.slow
def test_stream_flowing_past_the_keepalive_interval_gets_no_keepalives(live, auth, bridge):
    bridge.reply = " ".join(["word"] * 40)
    bridge.chunk_delay = 0.05  # 40 chunks over ~2 s, twice the test app's 1 s keep-alive interval
    result = stream_chat(live.url, _body(), auth)
    assert result.data[-1] == "[DONE]"
    assert result.frames[-1][0] - result.frames[0][0] > 1.5
    # Keep-alives fill silences; content flowing all along leaves none to fill.
    assert result.comments == []


@pytest.mark.slow
def test_stream_pausing_after_content_gets_keepalives_in_the_pause(live, auth, bridge):
    bridge.script(Stall(after_chunks=2, seconds=2.5))  # a model that stops to think mid-answer
    result = stream_chat(live.url, _body(), auth)
    assert result.data[-1] == "[DONE]"
    first_content = next(i for i, (_, f) in enumerate(result.frames) if b'"content": "Hello"' in f)
    # Written during the pause, while the upstream is silent: how a client (and Passenger) sees the stream alive.
    assert [f for _, f in result.frames[first_content:] if f == b": keep-alive\n\n"]

@pytest.mark.slow
def test_stream_slow_upstream_headers_still_get_keepalives(live, auth, bridge):
    bridge.headers_delay = 1.6
    result = stream_chat(live.url, _body(), auth)
    assert result.status == 200
    assert result.comments
    assert result.data[-1] == "[DONE]"


@pytest.mark.slow
def test_stream_refusal_after_commit_becomes_error_chunk(live, auth, bridge):
    bridge.headers_delay = 1.6
    bridge.no_browser = True
    result = stream_chat(live.url, _body(), auth)
    assert result.status == 200
    errors = [f for f in result.json_frames() if "error" in f]
    assert errors[0]["error"]["code"] == "bridge_no_browser"
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert result.data[-1] == "[DONE]"


def test_stream_refusal_before_commit_keeps_http_status(live, auth, bridge):
    bridge.no_browser = True
    result = stream_chat(live.url, _body(), auth)
    assert result.status == 503
    assert result.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("marker", "code", "kept"),
    [
        ("[[fake:drop]]", "upstream_stream_broken", "Hello from"),
        ("[[fake:midfail]]", "bridge_error", "Hello from"),
    ],
)
def test_stream_upstream_fault_ends_with_error_chunk_then_done(live, auth, marker, code, kept):
    result = stream_chat(live.url, _body(f"hi {marker}"), auth)
    assert result.status == 200
    frames = result.json_frames()
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in frames if "choices" in c)
    assert text == kept
    assert frames[-1]["error"]["code"] == code
    assert result.data[-1] == "[DONE]"


def test_stream_garbage_before_any_content_is_retried_then_a_real_502(live, auth, bridge):
    result = stream_chat(live.url, _body("hi [[fake:garbage]]"), auth)
    assert result.status == 502
    assert json.loads(result.raw_body)["error"]["code"] == "upstream_bad_stream"
    assert len([r for r in bridge.requests if r.path == "/v1/chat/completions"]) == 2  # LMARENA_BRIDGE_MAX_RETRIES=1


@pytest.mark.slow
def test_stream_slow_first_token_is_ended_by_first_byte_timeout(serve, auth, bridge):
    bridge.first_chunk_delay = 4
    server = serve(LMARENA_BRIDGE_TIMEOUT=1, LMARENA_BRIDGE_MAX_RETRIES=0)
    started = time.monotonic()
    result = stream_chat(server.url, _body(), auth)
    assert time.monotonic() - started < 2.5
    assert result.json_frames()[-1]["error"]["code"] == "upstream_first_byte_timeout"
    assert result.data[-1] == "[DONE]"


def test_stream_stalled_mid_way_is_ended_by_idle_timeout_not_retried(serve, auth, bridge):
    bridge.script(Stall(after_chunks=2, seconds=5))
    server = serve(LMARENA_BRIDGE_IDLE_TIMEOUT=0.5)
    started = time.monotonic()
    result = stream_chat(server.url, _body(), auth)
    assert time.monotonic() - started < 2.5
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in result.json_frames() if "choices" in c)
    assert text == "Hello from"
    assert result.json_frames()[-1]["error"]["code"] == "upstream_idle_timeout"
    assert result.data[-1] == "[DONE]"
    assert len([r for r in bridge.requests if r.path == "/v1/chat/completions"]) == 1


def test_client_disconnect_mid_stream_closes_upstream(live, auth, bridge):
    bridge.chunk_delay = 0.05
    conn, response = open_stream(live.url, _body("tick [[fake:slow]]"), auth)
    frames = read_frames(response, stop_after=4)
    assert len(frames) >= 4
    assert bridge.open_streams == 1
    response.close()  # the client goes away mid-stream
    conn.close()
    closed_at = time.monotonic()
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=3), "upstream stream was never closed"
    assert bridge.disconnects[0].at - closed_at < 1.0
    assert bridge.wait_until(lambda: bridge.open_streams == 0, timeout=2)


@pytest.mark.slow
def test_client_disconnect_while_waiting_for_first_token_closes_upstream(live, auth, bridge):
    bridge.first_chunk_delay = 30
    conn, response = open_stream(live.url, _body(), auth)
    assert response.status == 200
    read_frames(response, stop_after=1)  # the first keep-alive
    response.close()
    conn.close()
    closed_at = time.monotonic()
    # A server learns the peer is gone only from a write: the first keep-alive after the close draws a TCP
    # reset, a later one fails. With 1 s keep-alives that is at most ~3 s; then the upstream goes at once.
    assert bridge.wait_until(lambda: bridge.disconnects, timeout=6), "upstream was left waiting"
    assert bridge.disconnects[0].at - closed_at < 3.5


@pytest.mark.parametrize("stream", [True, False])
def test_consecutive_answers_reuse_one_upstream_connection(openai_client, bridge, stream):
    for _ in range(5):
        answer = openai_client.chat.completions.create(**_body(stream=stream))
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    # The model list was fetched once first; every answer after it rode the same kept-alive connection.
    assert bridge.accepted == 1, bridge.accepted


@pytest.mark.parametrize("use_poll", [True, False], ids=["poll", "select"])
def test_readable_waits_for_bytes_or_the_end(monkeypatch, use_poll):
    # select() is the path on Windows, where there is no poll(); both must say the same on a real socket pair.
    from app.providers import exchange

    if not use_poll:
        monkeypatch.setattr(exchange, "_poll", None)
    left, right = socket.socketpair()
    with left, right:
        started = time.monotonic()
        assert not exchange._readable(left, 0.2)
        assert time.monotonic() - started >= 0.15  # it waited, rather than answering at once
        right.sendall(b"data: x\n\n")
        assert exchange._readable(left, 5)
        left.recv(64)
        right.shutdown(socket.SHUT_WR)  # the end of the stream is readable too: the read returns b""
        assert exchange._readable(left, 5)


class SlowEnd(FakeUpstream):
    """An upstream that sends its answer and [DONE] at once, then trickles comments before ending the body."""

    server_header = "uvicorn"

    def handle(self, h) -> None:
        if h.route_path == "/v1/models":
            h.send_json(200, {"object": "list", "data": [{"id": "gpt-5", "object": "model", "created": 0}]})
            return
        h.start_stream()
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5"}
        delta = {"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}
        h.write_chunk(b"data: " + json.dumps({**chunk, "choices": [delta]}).encode() + b"\n\n")
        h.write_chunk(b"data: [DONE]\n\n")
        for _ in range(4):
            h.wait(0.3)
            h.write_chunk(b": still here\n\n")
        h.end_stream()


def test_done_is_not_held_back_by_an_upstream_slow_to_end_its_body(serve, auth):
    with SlowEnd() as upstream:
        server = serve(LMARENA_BRIDGE_BASE_URL=upstream.url)
        result = stream_chat(server.url, _body(), auth)
        assert result.data[-1] == "[DONE]"
        content_at = next(t for t, f in result.frames if b'"Hi"' in f)
        # Reading the body's end (to reuse the connection) happens after [DONE] is written, within 0.25 s in all.
        assert result.frames[-1][0] - content_at < 0.2


@pytest.mark.slow
def test_role_chunk_then_a_long_think_sends_headers_and_keepalives_early(serve, with_yupp, yupp, auth):
    server = serve(**with_yupp)
    yupp.script(Stall(after_chunks=1, seconds=2.5))  # yupp2Api's role chunk at once, then 2.5 s before content
    started = time.monotonic()
    body = {"model": "GPT-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    result = stream_chat(server.url, body, {**auth, "X-Provider": "yupp2api"})
    assert result.status == 200 and result.data[-1] == "[DONE]"
    # The response starts after one keep-alive interval (1 s here), whatever the upstream is still thinking.
    assert result.frames[0][0] - started < 1.6
    assert result.comments
