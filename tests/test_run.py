"""The README's run command: `python -m app` serves the gateway on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**settings: str) -> dict[str, str]:
    keep = ("GATEWAY_ANALYTICS_PATH",)  # set per test by conftest, like STORAGE_PATH
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("LMARENA_", "GATEWAY_"))}
    env.update(GATEWAY_ENV_FILE="", **settings)
    return env


def test_run_command_serves_openai_api_on_loopback(bridge):
    port = _free_port()
    env = _env(
        GATEWAY_PORT=str(port),
        LMARENA_BRIDGE_BASE_URL=bridge.url,
        LMARENA_BRIDGE_API_KEY="sk-lmab-test",
        GATEWAY_API_KEYS="sk-run",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-run", max_retries=0) as client:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                if c.choices
            )
        assert text == "Hello from the real bridge"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/v1" in output


def test_run_command_exits_with_setting_name_on_bad_config():
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=_env(LMARENA_BRIDGE_TIMEOUT="soon"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "LMARENA_BRIDGE_TIMEOUT" in result.stderr
    assert "Traceback" not in result.stderr
