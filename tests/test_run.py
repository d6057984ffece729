"""The README's run command: `python -m app` serves the gateway on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import openai
import requests

from tests.helpers.gateway_process import ROOT, gateway_env, run_gateway


def test_run_command_serves_openai_api_on_loopback(bridge):
    with run_gateway(bridge.url) as gateway:
        port = gateway.port
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-run", max_retries=0) as client:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                if c.choices
            )
        assert text == "Hello from the real bridge"
    assert f"http://127.0.0.1:{port}/v1" in gateway.output


def _head_only(port: int, length: int) -> bytes:
    """Send a chat request's head announcing length body bytes, send none of them, and return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-run\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = conn.recv(65536)  # a socket.timeout here: the server is waiting for the body
            if not piece:
                break
            answer += piece
        return answer


def test_run_command_refuses_a_body_over_the_limit_before_reading_it(bridge):
    limit = 1024 * 1024
    with run_gateway(bridge.url, GATEWAY_MAX_BODY_BYTES=str(limit)) as gateway:
        # 3 MB announced, not one byte sent: the answer comes at once, so nothing was waiting for (or reading) them.
        assert _head_only(gateway.port, 3 * limit).startswith(b"HTTP/1.1 413 ")
        # Just over the limit, sent whole: the gateway's own 413, in OpenAI's shape.
        body = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "x" * limit}]})
        answer = requests.post(
            f"http://127.0.0.1:{gateway.port}/v1/chat/completions",
            data=body,
            headers={"Authorization": "Bearer sk-run", "Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "request_too_large"
        assert requests.get(f"http://127.0.0.1:{gateway.port}/health", timeout=5).status_code == 200


def test_run_command_exits_with_setting_name_on_bad_config():
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=gateway_env(LMARENA_BRIDGE_TIMEOUT="soon"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "LMARENA_BRIDGE_TIMEOUT" in result.stderr
    assert "Traceback" not in result.stderr
