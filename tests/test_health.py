"""GET /health: status, version, time and cached upstream reachability."""

from __future__ import annotations

from datetime import datetime

from app.version import __version__
from tests.helpers.redis_server import RedisServer


def test_health_reports_ok_with_reachable_bridge(client, bridge):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert datetime.fromisoformat(body["time"].replace("Z", "+00:00")).tzinfo is not None
    assert body["auth"] == "api_key"
    upstream = body["upstreams"]["lmarena_bridge"]
    assert upstream["ok"] is True
    assert upstream["base_url"] == bridge.url
    assert upstream["latency_ms"] >= 0
    assert "warnings" not in body


def test_health_reports_degraded_when_bridge_down(make_app):
    body = make_app(LMARENA_BRIDGE_BASE_URL="http://127.0.0.1:9").test_client().get("/health").get_json()
    assert body["status"] == "degraded"
    assert body["upstreams"]["lmarena_bridge"]["ok"] is False
    assert "connection refused" in body["upstreams"]["lmarena_bridge"]["error"]


def test_health_is_cached_so_it_cannot_hammer_upstreams(client, bridge):
    for _ in range(10):
        client.get("/health")
    assert len([r for r in bridge.requests if r.path == "/v1/models"]) == 1


def test_health_needs_no_key_and_shows_no_secret(client):
    text = client.get("/health").get_data(as_text=True)
    assert "sk-lmab-test" not in text and "sk-gw-test" not in text and "sk-admin-test" not in text


def test_health_times_out_quickly_on_a_hung_bridge(make_app, bridge):
    bridge.headers_delay = 5
    response = make_app(GATEWAY_HEALTH_TIMEOUT=0.3).test_client().get("/health")
    body = response.get_json()
    assert body["upstreams"]["lmarena_bridge"]["ok"] is False
    assert body["upstreams"]["lmarena_bridge"]["latency_ms"] < 2000


def test_index_points_to_the_openai_base_url(client):
    assert client.get("/").get_json()["openai_base_url"] == "http://localhost/v1"


def test_health_shows_session_store_and_degrades_when_it_breaks(app, client, admin):
    client.post(
        "/session/register",
        headers=admin,
        json={
            "domain": "lmarena.ai",
            "session_name": "a",
            "session_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "message_id": "4fa85f64-5717-4562-b3fc-2c963f66afa7",
        },
    )
    body = client.get("/health").get_json()
    assert body["session_store"] == {"ok": True, "backend": "json", "sessions": 1}
    with open(app.config["STORAGE_PATH"], "w") as f:
        f.write("{broken")
    body = client.get("/health").get_json()
    assert body["status"] == "degraded"
    assert body["session_store"]["ok"] is False


def test_health_says_when_redis_is_gone_and_when_it_is_back(make_app, tmp_path):
    (tmp_path / "redis").mkdir()
    (tmp_path / "storage").mkdir()  # the generated secrets' folder
    server = RedisServer(tmp_path / "redis")
    try:
        client = make_app(SESSION_STORE="redis", REDIS_URL=server.url).test_client()
        assert client.get("/health").get_json()["session_store"] == {"ok": True, "backend": "redis"}
        server.stop()
        answer = client.get("/health")
        body = answer.get_json()
        assert answer.status_code == 200 and body["status"] == "degraded"  # load balancers keep the instance
        assert body["session_store"] == {
            "ok": False,
            "error": "The Redis session store is unavailable (ConnectionError).",
        }
        server.start()
        assert client.get("/health").get_json()["session_store"] == {"ok": True, "backend": "redis"}
    finally:
        server.stop()
