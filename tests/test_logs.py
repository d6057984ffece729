"""Logs: text or one JSON object per line (GATEWAY_LOG_FORMAT), request lines' fields, the instance in /metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.config import ConfigError, load_settings
from tests.conftest import ADMIN_KEY, BRIDGE_KEY, CLIENT_KEY
from tests.helpers.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "tell nobody about the orange-heron-5531"  # must never reach a log line
A = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222")
B = ("33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444")
USER = {"Authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def chat(url: str, headers: dict, *, stream: bool = False, words: str = PROMPT) -> requests.Response:
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": words}], "stream": stream}
    response = requests.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=20)
    response.content  # noqa: B018 - a stream's line is written when it ends: read it to the end
    return response


def register(url: str, name: str, ids: tuple[str, str], bridge_url: str, pool: str | None = None) -> None:
    body = {"domain": "lmarena.ai", "session_name": name, "session_id": ids[0], "message_id": ids[1]}
    body |= {"bridge_base_url": bridge_url} | ({"pool": pool} if pool else {})
    answer = requests.post(url + "/session/register", json=body, headers=ADMIN, timeout=20)
    assert answer.status_code == 201, answer.text


def parsed(stderr: str, only_json: bool = True) -> list[dict]:
    """Parse every line of stderr as one JSON object (any other line fails the test, naming it).

    only_json=False skips lines that are not the gateway's: in the test's own process the fake upstreams' servers
    write to stderr too (socketserver's report of a connection the gateway closed).
    """
    entries = []
    for line in stderr.splitlines():
        if not only_json and not line.startswith('{"time": '):
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    return entries


def by_request(entries: list[dict]) -> dict[str, dict]:
    return {e["request_id"]: e for e in entries if e["logger"] == "app.requests"}


def test_json_request_lines_say_who_served_and_hold_no_key_or_prompt(serve, bridge, tabs, capsys):
    one, two = tabs
    server = serve(GATEWAY_LOG_FORMAT="json", LOG_REQUESTS=True, GATEWAY_INSTANCE_ID="gw-east-1")
    register(server.url, "solo", A, one.url)
    register(server.url, "member", B, two.url, pool="team")
    capsys.readouterr()

    plain = chat(server.url, USER)
    streamed = chat(server.url, {**USER, "X-Session-Name": "solo"}, stream=True)
    pooled = chat(server.url, {**USER, "X-Session-Pool": "team"})
    broken = chat(server.url, USER, stream=True, words=f"{PROMPT} [[fake:midfail]]")
    wrong_key = chat(server.url, {"Authorization": "Bearer sk-not-a-key"})
    bridge.no_browser = True
    no_browser = chat(server.url, USER)
    err = capsys.readouterr().err

    lines = by_request(parsed(err, only_json=False))
    first = lines[plain.headers["X-Request-Id"]]
    assert first["instance"] == "gw-east-1" and first["level"] == "INFO"
    assert first["time"].endswith("Z") and first["message"].startswith("POST '/v1/chat/completions' 200")
    assert (first["route"], first["status"], first["stream"]) == ("/v1/chat/completions", 200, False)
    assert (first["provider"], first["bridge"], first["attempts"]) == ("lmarena_bridge", bridge.url, 1)
    assert first["duration_ms"] > 0 and first["error_code"] is None and first["session"] is None
    solo = lines[streamed.headers["X-Request-Id"]]
    assert (solo["session"], solo["domain"], solo["bridge"], solo["stream"]) == ("solo", "lmarena.ai", one.url, True)
    assert solo["attempts"] == 1 and "X-Gateway-Attempts" not in streamed.headers
    team = lines[pooled.headers["X-Request-Id"]]
    assert (team["pool"], team["bridge"], team["session"]) == ("team", two.url, None)
    failed = lines[broken.headers["X-Request-Id"]]
    assert (failed["status"], failed["error_code"]) == (200, "bridge_error")  # a stream's errors travel in its body
    refused = lines[wrong_key.headers["X-Request-Id"]]
    assert (refused["status"], refused["error_code"], refused["provider"]) == (401, "invalid_api_key", None)
    down = lines[no_browser.headers["X-Request-Id"]]
    assert (down["status"], down["error_code"]) == (503, "bridge_no_browser")
    for secret in (CLIENT_KEY, ADMIN_KEY, BRIDGE_KEY, "sk-not-a-key", PROMPT, "orange-heron"):
        assert secret not in err


def test_a_streams_text_line_is_written_when_it_ends(make_app, caplog):
    client = make_app(LOG_REQUESTS=True).test_client()
    caplog.set_level("INFO", logger="app.requests")
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi [[fake:midfail]]"}], "stream": True}
    answer = client.post("/v1/chat/completions", json=body, headers=USER)
    assert [r for r in caplog.records if r.name == "app.requests"] == []  # the head went out, the stream goes on

    started = time.perf_counter()
    answer.get_data()
    took = (time.perf_counter() - started) * 1000
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.requests"]
    assert line.startswith("POST '/v1/chat/completions' 200 ") and line.endswith(" stream error=bridge_error")
    assert float(line.split()[3].removesuffix("ms")) >= took  # the whole stream, not its head


def test_metrics_label_every_series_with_the_instance(make_app, auth):
    named = make_app(GATEWAY_INSTANCE_ID="gw-west-2")
    hi = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    assert named.test_client().post("/v1/chat/completions", json=hi, headers=auth).status_code == 200
    named.extensions["analytics"].flush()

    for app, instance in ((named, "gw-west-2"), (make_app(), f"{socket.gethostname()}:{os.getpid()}")):
        text = app.test_client().get("/metrics").get_data(as_text=True)
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        names = {s.name for s in samples}
        assert {"gateway_requests_total", "gateway_request_duration_seconds_bucket"} <= names
        assert "gateway_analytics_dropped_total" in names
        assert {s.labels.get("gateway_instance") for s in samples} == {instance}


@pytest.mark.parametrize(
    ("name", "value"),
    [("GATEWAY_LOG_FORMAT", "yaml"), ("GATEWAY_INSTANCE_ID", "web 1"), ("GATEWAY_INSTANCE_ID", "x" * 129)],
)
def test_bad_log_settings_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={name: value}, dotenv_path=None)


@pytest.mark.slow  # a gateway process of its own
def test_every_line_a_json_gateway_process_writes_parses(bridge, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMARENA_", "GATEWAY_"))}
    env |= {
        "GATEWAY_ENV_FILE": "",
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_FORMAT": "json",
        "LOG_REQUESTS": "true",
        "LMARENA_BRIDGE_BASE_URL": bridge.url,
        "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "STORAGE_PATH": str(tmp_path / "sessions.json"),
        "GATEWAY_ANALYTICS_PATH": str(tmp_path / "analytics.sqlite3"),
    }
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                requests.get(url + "/health", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        answers = [chat(url, USER), chat(url, USER, stream=True), chat(url, {}), requests.get(url + "/nope", timeout=5)]
    finally:
        process.terminate()
        process.wait(timeout=10)

    entries = parsed((tmp_path / "err").read_text())
    assert (tmp_path / "out").read_text() == ""
    assert any(f"{url}/v1" in e["message"] for e in entries)  # where it listens, as a log line too
    assert {e["instance"] for e in entries} == {f"{socket.gethostname()}:{process.pid}"}
    lines = by_request(entries)
    assert [lines[a.headers["X-Request-Id"]]["status"] for a in answers] == [200, 200, 401, 404]
    assert lines[answers[3].headers["X-Request-Id"]]["route"] is None  # no route matched; the path says what
    assert PROMPT not in (tmp_path / "err").read_text() and CLIENT_KEY not in (tmp_path / "err").read_text()
