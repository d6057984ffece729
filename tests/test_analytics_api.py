"""Analytics from real requests through the gateway: /analytics/*, /metrics (parsed by prometheus_client), cleanup."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.sseclient_raw import open_stream, read_frames

HI = [{"role": "user", "content": "Say hello"}]


def samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def test_summary_counts_real_requests(traffic, admin):
    body = traffic.get("/analytics/summary?window=1h", headers=admin).get_json()
    row = next(r for r in body["data"] if r["provider"] == "lmarena_bridge" and r["model"] == "gpt-5")
    assert row["requests"] == 4 and row["errors"] == 1
    assert row["error_rate"] == pytest.approx(0.25)
    assert row["latency_p50_ms"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"]
    assert row["ttfb_p50_ms"] is not None and row["ttfb_p50_ms"] > 0  # the stream's first content
    assert row["completion_tokens"] > 0


def test_sessions_show_per_session_traffic(traffic, admin):
    data = traffic.get("/analytics/sessions", headers=admin).get_json()["data"]
    team = next(s for s in data if s["session_name"] == "team-a")
    assert (team["domain"], team["requests"], team["errors"]) == ("lmarena.ai", 1, 0)


def test_analytics_need_the_admin_key_and_a_sane_window(traffic, admin):
    assert traffic.get("/analytics/summary").status_code == 401
    assert traffic.get("/analytics/summary?window=5s", headers=admin).status_code == 400
    assert traffic.get("/analytics/summary?window=7d", headers=admin).get_json()["window_seconds"] == 7 * 86400


def test_metrics_parse_and_match_the_traffic(traffic):
    response = traffic.get("/metrics")
    assert response.content_type.startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    requests_total = {
        (s.labels["provider"], s.labels["model"], s.labels["status"]): s.value
        for s in samples(text, "gateway_requests_total")
    }
    assert requests_total[("lmarena_bridge", "gpt-5", "200")] == 3
    assert requests_total[("lmarena_bridge", "gpt-5", "503")] == 1
    counts = [
        s
        for s in samples(text, "gateway_request_duration_seconds_count")
        if s.labels["status"] == "200" and s.labels["model"] == "gpt-5"
    ]
    assert counts[0].value == 3
    infinite = [
        s
        for s in samples(text, "gateway_request_duration_seconds_bucket")
        if s.labels["le"] == "+Inf" and s.labels["status"] == "200" and s.labels["model"] == "gpt-5"
    ]
    assert infinite[0].value == 3


def test_metrics_count_open_streams_across_the_app(live, auth, bridge):
    bridge.chunk_delay = 0.05
    conn, response = open_stream(
        live.url,
        {"model": "gpt-5", "messages": [{"role": "user", "content": "tick [[fake:slow]]"}], "stream": True},
        auth,
    )
    try:
        read_frames(response, stop_after=3)
        gauge = samples(live.app.test_client().get("/metrics").get_data(as_text=True), "gateway_active_streams")
        assert sum(s.value for s in gauge) == 1
    finally:
        response.close()
        conn.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        gauge = samples(live.app.test_client().get("/metrics").get_data(as_text=True), "gateway_active_streams")
        if sum(s.value for s in gauge) == 0:
            break
        time.sleep(0.1)
    assert sum(s.value for s in gauge) == 0


def test_model_ids_with_newlines_survive_the_exposition_format(serve, with_yupp, openai_for):
    server = serve(**with_yupp)
    model = "Claude Sonnet 4\n☀️ | 🆕"
    openai_for(server).chat.completions.create(model=model, messages=HI)
    text = server.app.test_client().get("/metrics").get_data(as_text=True)
    assert model in {s.labels["model"] for s in samples(text, "gateway_requests_total")}


def test_metrics_token_when_configured(make_app):
    client = make_app(GATEWAY_METRICS_TOKEN="scrape-me").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


def test_analytics_can_be_switched_off(make_app, admin):
    client = make_app(GATEWAY_ENABLE_SESSION_ANALYTICS=False).test_client()
    assert client.get("/analytics/summary", headers=admin).get_json()["error"]["code"] == "analytics_disabled"
    assert client.get("/metrics").status_code == 404


def test_cron_cleanup_removes_old_events_but_keeps_counters(make_app, admin):
    app = make_app(GATEWAY_CRON_TOKEN="tok", GATEWAY_ANALYTICS_RETENTION_DAYS=1)
    recorder = app.extensions["analytics"]
    recorder.record({"ts": time.time() - 3 * 86400, "provider": "p", "model": "m", "status": 200, "latency_ms": 5})
    recorder.record({"ts": time.time(), "provider": "p", "model": "m", "status": 200, "latency_ms": 5})
    client = app.test_client()
    result = client.post("/cron/cleanup", headers={"X-Cron-Token": "tok"}).get_json()
    assert result["analytics"]["events_removed"] == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert [s.value for s in samples(text, "gateway_requests_total") if s.labels["provider"] == "p"] == [2]
    assert json.dumps(result)


def _events(app, kind):
    import sqlite3

    app.extensions["analytics"].flush()
    with sqlite3.connect(app.config["GATEWAY_ANALYTICS_PATH"]) as db:
        return db.execute("SELECT domain, session_name, detail FROM events WHERE kind = ?", (kind,)).fetchall()


def test_userscript_events_are_token_scoped_validated_and_recorded(app, admin):
    client = app.test_client()
    script = client.get(
        "/userscript/generate",
        headers=admin,
        query_string={"session_name": "team-a", "domains": "lmarena.ai", "format": "raw"},
    )
    token = json.loads(script.get_data(as_text=True).split("const CONFIG = ", 1)[1].split(";\n", 1)[0])["token"]
    headers = {"X-Registration-Token": token}
    event = {"domain": "lmarena.ai", "session_name": "team-a", "kind": "capture", "detail": {"via": "fetch"}}
    assert client.post("/analytics/event", json=event, headers=headers).status_code == 202
    assert client.post("/analytics/event", json={**event, "session_name": "team-b"}, headers=headers).status_code == 403
    assert client.post("/analytics/event", json={**event, "kind": "pwn"}, headers=headers).status_code == 400
    assert client.post("/analytics/event", json={**event, "detail": "x" * 9000}, headers=headers).status_code == 413
    assert client.post("/analytics/event", json=event).status_code == 401
    assert [(d, n, json.loads(detail)) for d, n, detail in _events(app, "capture")] == [
        ("lmarena.ai", "team-a", {"via": "fetch"})
    ]


def test_sessions_show_the_userscripts_captures_and_errors(app, admin):
    client = app.test_client()
    script = client.get(
        "/userscript/generate",
        headers=admin,
        query_string={"session_name": "tab-a", "domains": "lmarena.ai", "format": "raw"},
    )
    token = json.loads(script.get_data(as_text=True).split("const CONFIG = ", 1)[1].split(";\n", 1)[0])["token"]
    headers = {"X-Registration-Token": token}
    sent = {"domain": "lmarena.ai", "session_name": "tab-a"}
    # What the generated script reports: a capture of the page's ids, then failed registrations.
    capture = {**sent, "kind": "capture", "detail": {"path": "retry-evaluation-session-message", "ids_source": "retry"}}
    assert client.post("/analytics/event", json=capture, headers=headers).status_code == 202
    captured_by = time.time()
    for attempt, status in ((1, 500), (2, 401)):
        error = {**sent, "kind": "error", "detail": {"step": "register", "status": status, "attempt": attempt}}
        assert client.post("/analytics/event", json=error, headers=headers).status_code == 202
    data = client.get("/analytics/sessions", headers=admin).get_json()["data"]
    tab = next(s for s in data if s["session_name"] == "tab-a")
    assert (tab["domain"], tab["requests"], tab["errors"], tab["last_seen"]) == ("lmarena.ai", 0, 0, None)
    assert captured_by - 60 < tab["last_capture"] <= captured_by
    assert tab["script_errors_24h"] == 2
    assert tab["last_script_error"]["detail"] == {"step": "register", "status": 401, "attempt": 2}
    assert tab["last_script_error"]["ts"] >= tab["last_capture"]
