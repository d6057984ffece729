"""Every error, routing ones included, is OpenAI-shaped; keys are checked; request ids are safe."""

from __future__ import annotations

import pytest

SHAPE = {"message", "type", "param", "code"}


def _error(response):
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == SHAPE
    return body["error"]


def test_unknown_path_is_openai_404(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"


def test_unknown_path_message_names_the_real_endpoints(client):
    message = _error(client.get("/nothing-here"))["message"]
    assert message == (
        "Unknown endpoint. The gateway serves /v1/chat/completions, /v1/images/generations and /v1/models."
    )


def test_unknown_path_message_follows_the_routes(make_app):
    app = make_app()
    app.add_url_rule("/v1/embeddings", "embeddings", lambda: {}, methods=["POST"])
    message = _error(app.test_client().get("/nothing-here"))["message"]
    assert "/v1/embeddings" in message and message.endswith("and /v1/models.")


def test_wrong_method_is_openai_405_with_allow(client, auth):
    response = client.get("/v1/chat/completions", headers=auth)
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_500_without_traceback(make_app, caplog):
    app = make_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals sk-should-not-leak")

    response = app.test_client().get("/boom", headers={"X-Request-Id": "req-123"})
    assert response.status_code == 500
    error = _error(response)
    assert error["type"] == "server_error"
    assert "req-123" in error["message"]
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert any("req-123" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": "Basic c2stZ3ctdGVzdA=="}],
)
def test_v1_without_valid_key_is_401(client, bridge, headers):
    response = client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": []}, headers=headers)
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert bridge.requests == []


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer sk-gw-test"}, {"X-API-Key": "sk-gw-test"}, {"Authorization": "bearer  sk-gw-test"}],
)
def test_v1_accepts_bearer_and_x_api_key(client, headers):
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_several_client_keys_each_work(make_app):
    client = make_app(GATEWAY_API_KEYS="key-one, key-two").test_client()
    assert client.get("/v1/models", headers={"X-API-Key": "key-one"}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "key-two"}).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "key-three"}).status_code == 401


def test_open_mode_serves_without_key_and_says_so(make_app, caplog):
    app = make_app(GATEWAY_API_KEYS="")
    assert any("GATEWAY_API_KEYS is not set" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    assert client.get("/v1/models").status_code == 200
    health = client.get("/health").get_json()
    assert health["auth"] == "open"
    assert "GATEWAY_API_KEYS" in health["warnings"][0]


def test_request_id_is_echoed_when_safe_and_replaced_when_not(client):
    assert client.get("/health", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    replaced = client.get("/health", headers={"X-Request-Id": "bad id\twith<stuff>"}).headers["X-Request-Id"]
    assert replaced != "bad id\twith<stuff>"
    assert len(replaced) == 32


def test_chat_response_names_the_provider(client, auth):
    response = client.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, headers=auth
    )
    assert response.headers["X-Gateway-Provider"] == "lmarena_bridge"


def test_log_requests_logs_one_line_without_secrets(make_app, auth, caplog):
    client = make_app(LOG_REQUESTS=True).test_client()
    caplog.set_level("INFO", logger="app.requests")
    client.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, headers=auth
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "app.requests"]
    assert len(lines) == 1
    assert "/v1/chat/completions" in lines[0] and "200" in lines[0] and "gpt-5" in lines[0]
    assert "sk-gw-test" not in caplog.text and "sk-lmab-test" not in caplog.text


def test_cors_is_off_unless_origins_are_configured(make_app, auth):
    closed = make_app().test_client().get("/v1/models", headers={**auth, "Origin": "https://ui.example"})
    assert "Access-Control-Allow-Origin" not in closed.headers
    client = make_app(CORS_ORIGINS="https://ui.example").test_client()
    allowed = client.get("/v1/models", headers={**auth, "Origin": "https://ui.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    preflight = client.options(
        "/v1/chat/completions", headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 200
