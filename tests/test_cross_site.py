"""What another website can make a browser send: cross-site writes and rebound host names, refused."""

from __future__ import annotations

import json

import pytest
import requests

from app import registration_tokens
from tests.conftest import ADMIN_KEY, CLIENT_KEY
from tests.helpers.forms import csrf_token, post_form

SID, MID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"
EVIL = "http://evil.example"
REGISTRATION = {"domain": "lmarena.ai", "session_name": "team-a", "session_id": SID, "message_id": MID}
# What a page could send with no preflight: text/plain, re-pointing the session at a server it controls.
FORGED = json.dumps({**REGISTRATION, "bridge_base_url": "http://127.0.0.1:9"})


@pytest.fixture
def open_app(make_app):
    """The `make run` default: no client keys, no admin key."""
    return make_app(GATEWAY_API_KEYS="", GATEWAY_ADMIN_KEY="")


def stored(client) -> list:
    return client.get("/session/list").get_json()["data"]


def test_a_pages_text_plain_post_cannot_repoint_a_session(open_app):
    client = open_app.test_client()
    forged = client.post("/session/register", data=FORGED, content_type="text/plain", headers={"Origin": EVIL})
    assert forged.status_code == 403 and forged.get_json()["error"]["type"] == "permission_error"
    # Even where a browser sent no Origin: a page cannot send application/json without a preflight.
    bare = client.post("/session/register", data=FORGED, content_type="text/plain")
    assert bare.status_code == 415 and set(bare.get_json()["error"]) == {"message", "type", "param", "code"}
    assert stored(client) == []


def test_json_from_a_foreign_page_is_refused_and_from_its_own_or_a_tool_accepted(open_app):
    client = open_app.test_client()
    assert client.post("/session/register", json=REGISTRATION, headers={"Origin": EVIL}).status_code == 403
    assert client.post("/session/register", json=REGISTRATION, headers={"Origin": "null"}).status_code == 403
    assert stored(client) == []
    assert client.post("/session/register", json=REGISTRATION).status_code == 201  # curl, an SDK: no Origin
    own = client.post("/session/register", json=REGISTRATION, headers={"Origin": "http://localhost"})
    assert own.status_code == 200


def test_an_allowed_cors_origin_may_write(make_app):
    client = make_app(GATEWAY_ADMIN_KEY="", CORS_ORIGINS="https://ui.example").test_client()
    assert (
        client.post("/session/register", json=REGISTRATION, headers={"Origin": "https://ui.example"}).status_code == 201
    )


def test_requests_with_their_own_credential_skip_the_origin_rule(app, client, admin):
    # Tampermonkey sends its extension's origin with the userscript's posts, which carry a registration token.
    with app.app_context():
        token = registration_tokens.issue("team-a", ["lmarena.ai"])[0]
    extension = {"Origin": "moz-extension://0d1e2f3a-4b5c", "X-Registration-Token": token}
    assert client.post("/session/register", json=REGISTRATION, headers=extension).status_code == 201
    assert client.post("/session/register", json=REGISTRATION, headers={**admin, "Origin": EVIL}).status_code == 200
    chat = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    keyed = {"Authorization": f"Bearer {CLIENT_KEY}", "Origin": EVIL}
    assert client.post("/v1/chat/completions", json=chat, headers=keyed).status_code == 200


def test_v1_keeps_taking_bodies_curl_sends_but_not_from_a_foreign_page(open_app):
    client = open_app.test_client()
    body = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]})
    # curl -d without -H sends application/x-www-form-urlencoded: /v1 is read as JSON whatever the type says.
    assert (
        client.post("/v1/chat/completions", data=body, content_type="application/x-www-form-urlencoded").status_code
        == 200
    )
    forged = client.post("/v1/chat/completions", data=body, content_type="text/plain", headers={"Origin": EVIL})
    assert forged.status_code == 403


@pytest.mark.parametrize("host", ["rebind.attacker.example", "rebind.attacker.example:5104", "10.0.0.7"])
def test_an_open_gateway_answers_no_rebound_host_name(open_app, host):
    client = open_app.test_client()
    client.post("/session/register", json=REGISTRATION)
    refused = client.get("/session/list", headers={"Host": host})
    assert refused.status_code == 421
    assert refused.get_json()["error"]["code"] == "host_not_allowed"
    assert "team-a" not in refused.get_data(as_text=True)
    for loopback in ("localhost:5104", "127.0.0.1", "127.8.9.10:80", "[::1]:5104"):
        assert client.get("/session/list", headers={"Host": loopback}).status_code == 200, loopback


def test_listed_and_public_host_names_are_answered(make_app):
    client = make_app(
        GATEWAY_ADMIN_KEY="", GATEWAY_ALLOWED_HOSTS="gw.lan, 192.168.1.20", GATEWAY_PUBLIC_URL="https://gw.example/x"
    ).test_client()
    for host in ("gw.lan", "192.168.1.20:5104", "gw.example"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    assert client.get("/health", headers={"Host": "other.example"}).status_code == 421


def test_a_keyed_gateway_answers_any_host(client, admin):
    assert client.get("/session/list", headers={**admin, "Host": "gw.example.com"}).status_code == 200


def test_sign_out_from_another_site_is_refused(client):
    assert client.post("/dashboard/login", data={"admin_key": ADMIN_KEY}).status_code == 303
    assert client.post("/dashboard/logout", headers={"Origin": EVIL}).status_code == 403
    assert client.post("/dashboard/logout").status_code == 403  # a form without the page's token
    assert client.get("/dashboard").status_code == 200  # still signed in
    assert post_form(client, "/dashboard", "/dashboard/logout", {}).status_code == 303
    assert client.get("/dashboard").status_code == 401


def test_the_generator_form_of_an_open_gateway_needs_its_token(open_app):
    client = open_app.test_client()
    form = {"session_name": "team-a", "bridge_base_url": "http://127.0.0.1:9", "format": "raw"}
    forged = client.post("/userscript/generate", data=form, headers={"Origin": EVIL})
    assert forged.status_code == 403
    assert client.post("/userscript/generate", data=form).status_code == 403
    token = csrf_token(client, "/userscript/generate")
    made = client.post("/userscript/generate", data={**form, "csrf_token": token})
    assert made.status_code == 200 and "const CONFIG" in made.get_data(as_text=True)
    # A token from another browser (another cookie) is worth nothing.
    stranger = open_app.test_client()
    assert stranger.post("/userscript/generate", data={**form, "csrf_token": token}).status_code == 403


def test_the_pages_own_forms_post_with_a_real_origin(client):
    page = client.get("/dashboard")
    assert page.headers["Referrer-Policy"] == "same-origin"


def test_the_same_attacks_against_make_run(serve):
    """waitress, as `make run` serves it: Host and Origin as a browser would send them."""
    server = serve(GATEWAY_API_KEYS="", GATEWAY_ADMIN_KEY="")
    forged = requests.post(
        f"{server.url}/session/register",
        data=FORGED,
        headers={"Content-Type": "text/plain", "Origin": EVIL},
        timeout=10,
    )
    assert forged.status_code == 403
    rebound = requests.get(f"{server.url}/session/list", headers={"Host": "rebind.attacker.example"}, timeout=10)
    assert rebound.status_code == 421
    listed = requests.get(f"{server.url}/session/list", timeout=10)
    assert listed.status_code == 200 and listed.json()["data"] == []
