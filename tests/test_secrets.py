"""No secret leaves the gateway: not in answers, headers, logs, generated scripts or files under storage/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import BRIDGE_KEY, YUPP_KEY
from tests.upstreams.fake_bridge import FakeBridge

CLIENT = "sk-client-7f3a9c1e5b"
ADMIN = "sk-admin-0d8e4b2a6c"
CRON = "cron-token-5c1f9e7a3d"
METRICS = "metrics-token-2b6d0f8c4e"
USERSCRIPT = "userscript-secret-9a4c7e1b3f"
DASHBOARD = "dashboard-secret-6e2a8c4f0b"
SESSION_BRIDGE = "sk-session-bridge-3e9b1d7f"  # a session's own bridge_api_key: stored, and only sent to its bridge
SECRETS = (CLIENT, ADMIN, CRON, METRICS, USERSCRIPT, DASHBOARD, BRIDGE_KEY, YUPP_KEY, SESSION_BRIDGE)
HI = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
YUPP_MODEL = "Claude Sonnet 4\n☀️ | 🆕"  # yupp2Api's ids hold newlines and emoji
SID, MID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


@pytest.fixture
def own_bridge():
    """A second bridge, with its own key, that a session is bound to."""
    with FakeBridge(api_key=SESSION_BRIDGE, chunk_delay=0.01) as fake:
        yield fake


@pytest.fixture
def gateway(request, make_app, with_yupp):
    """The gateway with every secret set, logging each request (GATEWAY_LOG_FORMAT: the param, else text)."""
    return make_app(
        GATEWAY_LOG_FORMAT=getattr(request, "param", "text"),
        **with_yupp,
        GATEWAY_API_KEYS=CLIENT,
        GATEWAY_ADMIN_KEY=ADMIN,
        GATEWAY_CRON_TOKEN=CRON,
        GATEWAY_METRICS_TOKEN=METRICS,
        GATEWAY_USERSCRIPT_SECRET=USERSCRIPT,
        GATEWAY_DASHBOARD_SECRET=DASHBOARD,
        GATEWAY_RATE_LIMIT_PER_MINUTE=1000,
        LOG_REQUESTS=True,
        DEBUG_MODE=True,
    )


@pytest.mark.parametrize("gateway", ["text", "json"], indirect=True)
def test_nothing_secret_in_answers_headers_logs_or_storage(gateway, bridge, yupp, own_bridge, caplog, capsys):
    caplog.set_level("DEBUG")
    client = gateway.test_client()
    user = {"Authorization": f"Bearer {CLIENT}"}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    own = {"domain": "lmarena.ai", "session_name": "own", "session_id": SID, "message_id": MID}
    own_bridged = {**own, "bridge_base_url": own_bridge.url, "bridge_api_key": SESSION_BRIDGE}
    in_own = {**user, "X-Session-Name": "own"}
    answers = [
        client.post("/v1/chat/completions", json=HI, headers=user),
        client.post("/v1/chat/completions", json={**HI, "stream": True}, headers=user),
        client.post(
            "/v1/chat/completions", json={**HI, "model": YUPP_MODEL}, headers={**user, "X-Provider": "yupp2api"}
        ),
        client.post("/v1/chat/completions", json={**HI, "model": "nope"}, headers=user),
        client.post("/v1/chat/completions", json=HI, headers={"Authorization": "Bearer sk-wrong"}),
        client.post("/v1/chat/completions", data="{not json", headers=user),
        client.get("/v1/models", headers=user),
        client.post(
            "/session/register",
            headers=admin,
            json={"domain": "lmarena.ai", "session_name": "team-a", "session_id": SID, "message_id": MID},
        ),
        client.get("/session/list", headers=admin),
        client.get("/providers/status", headers=admin),
        client.get("/health"),
        client.get("/"),
        client.get("/metrics", headers={"Authorization": f"Bearer {METRICS}"}),
        client.get("/analytics/summary", headers=admin),
        client.get("/dashboard", headers=admin),
        client.post("/cron/cleanup", headers={"X-Cron-Token": CRON}),
        client.get("/userscript/generate", query_string={"session_name": "team-a", "format": "raw"}, headers=admin),
        client.post("/dashboard/login", data={"admin_key": ADMIN}),
        client.post("/session/register", headers=admin, json=own_bridged),
        client.post("/v1/chat/completions", json=HI, headers=in_own),
        client.post("/v1/chat/completions", json={**HI, "stream": True}, headers=in_own),
        client.get("/v1/models", headers=in_own),
        client.get("/session/lmarena.ai/own", headers=admin),
        client.get("/session/list", headers=admin),
        client.get("/dashboard", headers=admin),
        client.post("/cron/cleanup", query_string={"dry_run": 1}, headers={"X-Cron-Token": CRON}),
    ]
    # The session's bridge now wants another key: its refusal must not echo the one it was sent.
    own_bridge.api_key = "sk-rotated-session-bridge"
    answers.append(client.post("/v1/chat/completions", json=HI, headers=in_own))
    own_bridge.api_key = SESSION_BRIDGE
    # Upstreams that refuse the gateway's key, fail, or say odd things: their errors must not echo a key back.
    bridge.api_key = "sk-rotated-upstream"
    answers.append(client.post("/v1/chat/completions", json=HI, headers=user))
    bridge.api_key = BRIDGE_KEY
    garbage = {**HI, "messages": [{"role": "user", "content": "[[fake:garbage]]"}]}
    answers.append(client.post("/v1/chat/completions", json=garbage, headers=user))

    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [a.status_code for a in answers[18:24]] == [201, 200, 200, 200, 200, 200]
    assert answers[22].get_json()["session"]["bridge_api_key_set"] is True
    assert [a.status_code for a in answers[-3:]] == [502, 502, 502]
    script = answers[16].get_data(as_text=True)
    assert answers[16].status_code == 200 and re.search(r'"token": ?"v1\.[\w-]+\.[\w-]+"', script)
    for answer in answers:
        shown = answer.get_data(as_text=True) + "\n" + str(answer.headers)
        assert leaks(shown) == [], (answer.request.path, answer.status_code)
    assert leaks(caplog.text) == []
    assert caplog.text.count("app.requests") >= len(answers)  # request lines were logged, at DEBUG level too
    # What the gateway's own handler wrote to stderr, in the format chosen (the fakes here may write there too).
    written = capsys.readouterr().err
    assert leaks(written) == []
    if gateway.config["GATEWAY_LOG_FORMAT"] == "json":
        entries = [json.loads(line) for line in written.splitlines() if line.startswith('{"time": ')]
        request_lines = [e for e in entries if e["logger"] == "app.requests"]
        assert len(request_lines) >= len(answers) and all(e["request_id"] for e in request_lines)
        assert {e["logger"] for e in entries} > {"app.requests"}  # debug and info lines of other modules too
    else:
        assert written.count(" INFO app.requests: ") >= len(answers)
    assert bridge.requests[0].headers["authorization"] == f"Bearer {BRIDGE_KEY}"  # the key was in use, and not shown
    sent = {r.headers.get("authorization") for r in own_bridge.requests if r.path == "/v1/chat/completions"}
    assert sent == {f"Bearer {SESSION_BRIDGE}"}  # only to its own bridge
    assert all(SESSION_BRIDGE not in str(r.headers) for r in bridge.requests + yupp.requests)
    storage = Path(gateway.config["STORAGE_PATH"])
    for path in storage.parent.rglob("*"):
        if path.is_file():
            # The session store is where a session's bridge key lives; nothing else under storage/ holds it.
            found = leaks(path.read_bytes().decode("latin-1"))
            assert found == ([SESSION_BRIDGE] if path == storage else []), path.name


def test_every_answer_says_nosniff(gateway):
    client = gateway.test_client()
    for path in ("/health", "/v1/models", "/nope", "/dashboard", "/userscript/generate"):
        assert client.get(path).headers["X-Content-Type-Options"] == "nosniff", path


@pytest.mark.parametrize("path", ["/dashboard", "/userscript/generate", "/userscript/advanced-generate"])
def test_html_pages_forbid_framing_scripts_and_foreign_loads(gateway, path):
    answer = gateway.test_client().get(path)
    assert answer.mimetype == "text/html"
    csp = dict(part.strip().split(" ", 1) for part in answer.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'none'" and "script-src" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Referrer-Policy"] == "same-origin"
    assert not re.search(r"<script\b", answer.get_data(as_text=True))
