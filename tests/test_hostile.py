"""Hostile requests on the wire: oversized headers and bodies, header injection; 4xx answers and a server that lives."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.conftest import CLIENT_KEY

CHAT = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]})


def send(server, method: str, path: str, headers: dict[str, str], body: bytes | str | None = None):
    """Return (status, headers, body) of one raw request, so nothing client-side cleans it up first."""
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        data = body.encode() if isinstance(body, str) else body
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


JSON_WITH_KEY = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}


def still_serves(server) -> bool:
    status, _, body = send(server, "POST", "/v1/chat/completions", JSON_WITH_KEY, CHAT)
    return status == 200 and b"Hello" in body


@pytest.mark.parametrize(
    ("name", "size"),
    [("X-Session-Name", 100_000), ("Authorization", 100_000), ("X-Request-Id", 100_000), ("X-Provider", 50_000)],
)
def test_an_oversized_header_value_is_a_clean_4xx(live, name, size):
    value = ("Bearer " if name == "Authorization" else "") + "a" * size
    headers = {**JSON_WITH_KEY, name: value}
    status, answer_headers, body = send(live, "POST", "/v1/chat/completions", headers, CHAT)
    if name == "X-Request-Id":
        assert status == 200 and len(answer_headers["X-Request-Id"]) <= 128  # replaced, not echoed
    else:
        assert 400 <= status < 500
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
        assert b"a" * 1000 not in body  # not echoed back
    assert still_serves(live)


def test_headers_beyond_the_server_limit_are_refused_and_the_server_lives(live):
    status, _, _ = send(live, "GET", "/health", {"X-Filler": "a" * 300_000})
    assert status in (400, 431)
    status, _, _ = send(live, "GET", "/health", {f"X-Many-{i}": "x" * 100 for i in range(3000)})
    assert status in (400, 431)
    assert still_serves(live)


def test_an_oversized_body_is_413_before_it_is_read(live):
    body = b'{"model": "gpt-5", "messages": [' + b"[1]," * 5_000_000 + b"[1]]}"
    status, _, answer = send(live, "POST", "/v1/chat/completions", JSON_WITH_KEY, body)
    assert status == 413 and json.loads(answer)["error"]["code"] == "request_too_large"
    assert still_serves(live)


@pytest.mark.parametrize("value", ["ab\u2028c", "<script>", "a" * 129])
def test_unsafe_request_ids_are_replaced_not_echoed(live, value):
    status, headers, _ = send(live, "GET", "/health", {"X-Request-Id": value.encode("utf-8").decode("latin-1")})
    assert status == 200
    assert headers["X-Request-Id"] != value and headers["X-Request-Id"].isalnum()


def test_control_characters_in_headers_are_refused_by_the_server(live):
    status, headers, _ = send(live, "GET", "/health", {"X-Request-Id": "abc\x00def"})
    assert status == 400 and "abc" not in headers.get("X-Request-Id", "")
    assert still_serves(live)


@pytest.mark.parametrize(
    "cookie",
    [
        b"9999999999.\xc3\xa9\xc3\xa9",  # UTF-8 in the signature
        b"9999999999.\xff",  # not UTF-8 at all
        "\u00b2\u00b2.ab".encode(),  # digits int() refuses
        b"9" * 5000 + b".ab",  # over int()'s 4,300 digits
        b'"9999999999.\\351"',  # a quoted cookie with an octal escape
    ],
    ids=["utf8 signature", "latin-1 byte", "superscript digits", "5000 digits", "quoted escape"],
)
def test_a_forged_dashboard_cookie_is_not_signed_in_and_never_a_500(live, cookie):
    status, _, body = send(live, "GET", "/dashboard", {"Cookie": b"gateway_dashboard=" + cookie})
    assert status == 401
    assert b"Sign in" in body
    assert still_serves(live)
