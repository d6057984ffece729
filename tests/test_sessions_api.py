"""/session endpoints: register, list, show, delete, heartbeat; validation stores nothing."""

from __future__ import annotations

import json
import uuid

import pytest

from app.store import get_store

SID, MID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"


def body(**changes):
    data = {"domain": "lmarena.ai", "session_name": "team-a", "session_id": SID, "message_id": MID}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def test_register_creates_201_then_updates_200(client, admin):
    first = client.post("/session/register", json=body(), headers=admin)
    assert first.status_code == 201
    session = first.get_json()["session"]
    assert first.get_json()["created"] is True
    assert session["domain"] == "lmarena.ai" and session["session_name"] == "team-a"
    assert session["session_id"] == SID and session["active"] is True
    assert session["created_at"].endswith("Z") and session["last_seen_at"] == session["updated_at"]
    second = client.post("/session/register", json=body(message_id=str(uuid.uuid4()).upper()), headers=admin)
    assert second.status_code == 200
    assert second.get_json()["created"] is False
    assert second.get_json()["session"]["message_id"].islower()
    assert second.get_json()["session"]["created_at"] == session["created_at"]


def test_session_endpoints_need_the_admin_key(client, auth):
    assert client.post("/session/register", json=body()).status_code == 401
    assert client.get("/session/list", headers=auth).status_code == 401  # a client key is not an admin key
    assert client.get("/session/list", headers={"X-Admin-Key": "sk-admin-test"}).status_code == 200


def test_session_endpoints_are_open_without_admin_key(make_app):
    client = make_app(GATEWAY_ADMIN_KEY="").test_client()
    assert client.post("/session/register", json=body()).status_code == 201


HOSTILE = [
    ("session_name", "../x"),
    ("session_name", "</script><script>alert(1)</script>"),
    ("session_name", 'a"b'),
    ("session_name", "x" * 10_000),
    ("session_name", ""),
    ("session_name", ".."),
    ("session_name", "a b"),
    ("session_name", "x" * 65),
    ("session_name", 5),
    ("session_name", ...),
    ("session_name", "name\n"),
    ("domain", "evil.com"),
    ("domain", "lmarena.ai.evil.com"),
    ("domain", "x" * 10_000),
    ("domain", ...),
    ("session_id", "not-a-uuid"),
    ("session_id", "3fa85f645717" + "4562b3fc2c963f66afa6xxxx"),
    ("session_id", 123),
    ("message_id", ...),
    ("bridge_base_url", "javascript:alert(1)"),
    ("bridge_base_url", "ftp://127.0.0.1/"),
    ("bridge_base_url", "file:///etc/passwd"),
    ("bridge_base_url", "http://user:pw@127.0.0.1:5102"),
    ("bridge_base_url", "http://"),
    ("bridge_base_url", "http://¡"),  # not a valid international domain name: every chat would fail
    ("bridge_base_url", 5),
    ("bridge_api_key", "sk key with spaces"),
    ("bridge_api_key", "sk-\n-injected: header"),
    ("bridge_api_key", "sk-ключ"),
    ("bridge_api_key", "k" * 513),
    ("bridge_api_key", 12345),
    ("models", ["gpt-5"]),
    ("models", {"gpt-5": 5}),
    ("models", {"": "id"}),
    ("models", {"gpt-5": ""}),
    ("models", {"gpt-5": "x" * 257}),
    ("models", {"gpt-5": "gpt-5\r\nX-Injected: 1"}),
    ("models", {"a\tb": "gpt-5"}),
    ("ids_source", "click"),
    ("ids_source", "Retry"),
    ("ids_source", "bridge_job\n"),
    ("ids_source", ""),
    ("ids_source", 1),
    ("ids_source", ["retry"]),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f"{f}={str(v)[:20]!r}" for f, v in HOSTILE])
def test_register_rejects_bad_fields_and_stores_nothing(app, client, admin, field, value):
    response = client.post("/session/register", json=body(**{field: value}), headers=admin)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    if field == "bridge_api_key":
        assert str(value)[:8] not in response.get_data(as_text=True)  # a secret, even a bad one, is not echoed
    with app.app_context():
        assert get_store().list() == []


# Each field a registration stores, with a raw JSON escape of a lone surrogate (\ud800 without its pair) put in at MARK.
LONE_SURROGATES = [
    ("models", {"MARK": "x"}),
    ("models", {"gpt-5": "xMARK"}),
    ("bridge_api_key", "sk-MARK"),
    ("bridge_base_url", "http://127.0.0.1:5102/MARK"),
    ("session_name", "aMARK"),
    ("pool", "MARK"),
]


@pytest.mark.parametrize(("field", "value"), LONE_SURROGATES, ids=[f"{f}={v!r}" for f, v in LONE_SURROGATES])
def test_register_refuses_a_lone_surrogate_and_stores_nothing(app, client, admin, field, value):
    raw = json.dumps(body(**{field: value})).replace("MARK", "\\ud800")
    response = client.post("/session/register", data=raw, headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["type"] == "invalid_request_error"
    with app.app_context():
        assert get_store().list() == []


def test_heartbeat_refuses_a_lone_surrogate(client, admin):
    assert client.post("/session/register", json=body(), headers=admin).status_code == 201
    raw = '{"domain": "lmarena.ai", "session_name": "team-a", "note": "\\ud800"}'
    response = client.post("/session/heartbeat", data=raw, headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 400


def test_register_accepts_bridge_url_and_models(client, admin):
    response = client.post(
        "/session/register",
        headers=admin,
        json=body(
            bridge_base_url="http://127.0.0.1:5202/v1/", models={"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086"}
        ),
    )
    session = response.get_json()["session"]
    assert session["bridge_base_url"] == "http://127.0.0.1:5202"
    assert session["models"] == {"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086"}


def test_register_accepts_bridge_names_and_lmarena_ids_as_map_values(client, admin):
    models = {"my-gpt": "gpt-5", "Claude Opus": "claude-opus-4-1-20250805", "pic": "null:image", "id": SID.upper()}
    response = client.post("/session/register", headers=admin, json=body(models=models))
    assert response.status_code == 201
    assert response.get_json()["session"]["models"] == models


@pytest.mark.parametrize("source", ["retry", "bridge_job"])
def test_ids_source_is_stored_shown_and_cleared_by_a_registration_without_it(client, admin, source):
    registered = client.post("/session/register", json=body(ids_source=source), headers=admin)
    assert registered.status_code == 201 and registered.get_json()["session"]["ids_source"] == source
    assert client.get("/session/lmarena.ai/team-a", headers=admin).get_json()["session"]["ids_source"] == source
    assert [s["ids_source"] for s in client.get("/session/list", headers=admin).get_json()["data"]] == [source]
    # The source describes the ids sent with it: new ids from nobody knows where are not "retry" or "bridge_job".
    again = client.post("/session/register", json=body(message_id=str(uuid.uuid4())), headers=admin)
    assert again.get_json()["session"]["ids_source"] is None
    assert client.post("/session/register", json=body(ids_source=None), headers=admin).status_code == 200


def test_register_domain_is_case_insensitive(client, admin):
    assert (
        client.post("/session/register", json=body(domain="Canary.LMArena.ai"), headers=admin).get_json()["session"][
            "domain"
        ]
        == "canary.lmarena.ai"
    )


def test_register_body_over_64k_is_413(client, admin):
    response = client.post("/session/register", json=body(padding="x" * 70_000), headers=admin)
    assert response.status_code == 413


def test_register_past_the_active_limit_is_429(make_app, admin):
    client = make_app(GATEWAY_CONCURRENT_SESSIONS_LIMIT=2).test_client()
    for name in ("one", "two"):
        assert client.post("/session/register", json=body(session_name=name), headers=admin).status_code == 201
    refused = client.post("/session/register", json=body(session_name="three"), headers=admin)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "session_limit_reached"
    assert "GATEWAY_CONCURRENT_SESSIONS_LIMIT" in refused.get_json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert client.post("/session/register", json=body(session_name="one"), headers=admin).status_code == 200
    assert (
        client.post(
            "/session/register", json=body(session_name="three", domain="beta.lmarena.ai"), headers=admin
        ).status_code
        == 201
    )


def test_list_show_delete(client, admin):
    client.post("/session/register", json=body(session_name="a"), headers=admin)
    client.post("/session/register", json=body(session_name="b", domain="alpha.lmarena.ai"), headers=admin)
    listed = client.get("/session/list", headers=admin).get_json()
    assert listed["count"] == 2 and listed["object"] == "list"
    only = client.get("/session/list?domain=alpha.lmarena.ai", headers=admin).get_json()
    assert [s["session_name"] for s in only["data"]] == ["b"]
    assert client.get("/session/list?domain=evil.com", headers=admin).status_code == 400
    assert client.get("/session/lmarena.ai/a", headers=admin).get_json()["session"]["session_name"] == "a"
    assert client.get("/session/alpha.lmarena.ai/a", headers=admin).status_code == 404
    assert client.delete("/session/lmarena.ai/a", headers=admin).get_json()["deleted"] is True
    missing = client.delete("/session/lmarena.ai/a", headers=admin)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "session_not_found"
    assert client.get("/session/lmarena.ai/..%2Fetc", headers=admin).status_code in (400, 404)


def test_heartbeat_updates_last_seen(client, admin):
    registered = client.post("/session/register", json=body(), headers=admin).get_json()["session"]
    beat = client.post("/session/heartbeat", json={"domain": "lmarena.ai", "session_name": "team-a"}, headers=admin)
    assert beat.status_code == 200
    assert beat.get_json()["session"]["last_seen_at"] >= registered["last_seen_at"]
    unknown = client.post("/session/heartbeat", json={"domain": "lmarena.ai", "session_name": "ghost"}, headers=admin)
    assert unknown.status_code == 404
    assert (
        client.post("/session/heartbeat", json={"domain": "evil.com", "session_name": "x"}, headers=admin).status_code
        == 400
    )


def test_bridge_key_is_stored_never_shown_kept_when_omitted_and_removable(client, admin):
    url = "http://127.0.0.1:5202"
    first = client.post(
        "/session/register", json=body(bridge_base_url=url, bridge_api_key="sk-own-7c1d"), headers=admin
    )
    shown = [
        first.get_data(as_text=True),
        client.get("/session/lmarena.ai/team-a", headers=admin).get_data(as_text=True),
        client.get("/session/list", headers=admin).get_data(as_text=True),
        client.get("/dashboard", headers=admin).get_data(as_text=True),
    ]
    assert first.status_code == 201
    assert [("sk-own-7c1d" in text, '"bridge_api_key":' in text) for text in shown] == [(False, False)] * 4
    session = client.get("/session/lmarena.ai/team-a", headers=admin).get_json()["session"]
    assert (session["bridge_base_url"], session["bridge_api_key_set"]) == (url, True)

    def key_set(**changes):
        response = client.post("/session/register", json=body(**changes), headers=admin)
        assert response.status_code == 200
        return response.get_json()["session"]["bridge_api_key_set"]

    assert key_set() is True  # omitted: kept
    assert key_set(bridge_api_key="") is False  # empty (or null): removed
    assert key_set(bridge_api_key="sk-own-7c1d") is True
    assert key_set(bridge_base_url="http://127.0.0.1:5203") is False  # another bridge: the old key is not sent there
    with client.application.app_context():
        assert get_store().get("lmarena.ai", "team-a").bridge_api_key is None
