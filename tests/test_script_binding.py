"""Scripts generated for a bridge: URL and pool in the token, the key on the server; token expiry and revocation."""

from __future__ import annotations

import json
import re
import time

import pytest

from app import create_app, registration_tokens
from tests.conftest import ADMIN_KEY, app_settings, close_app
from tests.upstreams.fake_bridge import FakeBridge

IDS = ("3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7")
TAB_KEY = "sk-tab-one-key"


@pytest.fixture
def tabs():
    """Two bridges, one tab each; the first wants its own key."""
    with (
        FakeBridge(api_key=TAB_KEY, chunk_delay=0.001, reply="from tab one") as one,
        FakeBridge(api_key="sk-lmab-test", chunk_delay=0.001, reply="from tab two") as two,
    ):
        yield one, two


def generate(client, **form) -> str:
    """Return the raw script the generator form makes (admin key in the form, as a person would type it)."""
    data = {"session_name": "tab-one", "domains": "lmarena.ai", "format": "raw", "admin_key": ADMIN_KEY, **form}
    response = client.post("/userscript/generate", data=data)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def token_of(script: str) -> str:
    return json.loads(re.search(r"const CONFIG = (\{.*\});", script).group(1))["token"]


def register(client, token, name="tab-one", **extra):
    body = {"domain": "lmarena.ai", "session_name": name, "session_id": IDS[0], "message_id": IDS[1], **extra}
    return client.post("/session/register", json=body, headers={"X-Registration-Token": token})


def chat(client, auth, name="tab-one"):
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    return client.post("/v1/chat/completions", json=body, headers={**auth, "X-Session-Name": name})


def test_script_for_a_bridge_binds_its_session_and_keeps_the_key_on_the_server(client, admin, auth, tabs, bridge):
    one, two = tabs
    script = generate(client, bridge_base_url=one.url, pool="team", bridge_api_key=TAB_KEY)
    assert TAB_KEY not in script
    token = token_of(script)
    assert TAB_KEY not in str(registration_tokens.scope(client.application.extensions["regtoken_secret"], token))

    registered = register(client, token)
    assert registered.status_code == 201, registered.get_json()
    session = registered.get_json()["session"]
    assert (session["bridge_base_url"], session["pool"], session["bridge_api_key_set"]) == (one.url, "team", True)
    assert TAB_KEY not in registered.get_data(as_text=True)

    answer = chat(client, auth)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["choices"][0]["message"]["content"] == "from tab one"
    sent = [r for r in one.requests if r.path == "/v1/chat/completions"]
    assert len(sent) == 1 and sent[0].headers["authorization"] == f"Bearer {TAB_KEY}"
    assert not [r for r in bridge.requests if r.path == "/v1/chat/completions"]
    # The pool reaches it too.
    pooled = client.post(
        "/v1/chat/completions",
        json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={**auth, "X-Session-Pool": "team"},
    )
    assert pooled.get_json()["choices"][0]["message"]["content"] == "from tab one"


@pytest.mark.parametrize(
    "change",
    [
        {"bridge_base_url": "http://127.0.0.1:9"},
        {"pool": "elsewhere"},
        {"pool": None},
        {"bridge_api_key": "sk-other"},
        {"models": {"gpt-5": "gpt-4o"}},
    ],
)
def test_a_bound_token_cannot_point_its_session_anywhere_new(client, admin, tabs, change):
    one, _ = tabs
    token = token_of(generate(client, bridge_base_url=one.url, pool="team", bridge_api_key=TAB_KEY))
    assert register(client, token).status_code == 201
    refused = register(client, token, **change)
    assert refused.status_code == 403, refused.get_json()
    assert refused.get_json()["error"]["type"] == "permission_error"
    stored = client.get("/session/lmarena.ai/tab-one", headers=admin).get_json()["session"]
    assert (stored["bridge_base_url"], stored["pool"], stored["models"]) == (one.url, "team", {})
    assert stored["bridge_api_key_set"] is True


def test_a_bound_token_may_repeat_what_it_carries(client, tabs):
    one, _ = tabs
    token = token_of(generate(client, bridge_base_url=one.url + "/v1", pool="team"))
    repeated = register(client, token, bridge_base_url=one.url, pool="team")
    assert repeated.status_code == 201, repeated.get_json()


def test_admin_moves_survive_a_token_that_carries_no_binding(client, admin, tabs):
    one, _ = tabs
    token = token_of(generate(client))
    assert register(client, token).status_code == 201
    moved = client.post(
        "/session/register",
        json={
            "domain": "lmarena.ai",
            "session_name": "tab-one",
            "session_id": IDS[0],
            "message_id": IDS[1],
            "bridge_base_url": one.url,
            "pool": "team",
        },
        headers=admin,
    )
    assert moved.status_code == 200
    again = register(client, token).get_json()["session"]
    assert (again["bridge_base_url"], again["pool"]) == (one.url, "team")


@pytest.mark.parametrize(
    ("form", "query", "param"),
    [
        ({"bridge_base_url": "ftp://127.0.0.1/"}, {}, "bridge_base_url"),
        ({"bridge_base_url": "http://127.0.0.1:5102", "pool": "no spaces"}, {}, "pool"),
        ({"bridge_api_key": "sk-alone"}, {}, "bridge_api_key"),
        ({"bridge_base_url": "http://127.0.0.1:5102"}, {"bridge_api_key": "sk-in-the-url"}, "bridge_api_key"),
    ],
)
def test_bad_binding_fields_are_refused_and_nothing_is_issued(client, app, form, query, param):
    data = {"session_name": "tab-one", "format": "raw", "admin_key": ADMIN_KEY, **form}
    response = client.post("/userscript/generate", data=data, query_string=query)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param
    assert "sk-in-the-url" not in response.get_data(as_text=True)
    assert app.extensions["token_state"].names() == []  # no bridge key kept for a script never issued


def test_install_page_shows_the_binding_and_expiry_never_the_key(client, tabs):
    one, _ = tabs
    data = {
        "session_name": "tab-one",
        "domains": "lmarena.ai",
        "admin_key": ADMIN_KEY,
        "bridge_base_url": one.url,
        "pool": "team",
        "bridge_api_key": TAB_KEY,
    }
    page = client.post("/userscript/generate", data=data)
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert one.url in text and "team" in text and TAB_KEY not in text
    expiry = re.search(r"until <strong>(\d{4}-\d\d-\d\d) ", text).group(1)
    assert expiry == time.strftime("%Y-%m-%d", time.gmtime(time.time() + 180 * 86400))
    assert 'name="bridge_base_url"' in client.get("/userscript/generate").get_data(as_text=True)


def test_expired_token_stops_registering_and_its_update_link_stops(make_app):
    app = make_app(GATEWAY_USERSCRIPT_TOKEN_DAYS=1)
    client = app.test_client()
    with app.app_context():
        secret = app.extensions["regtoken_secret"]
        old = registration_tokens.mint(secret, "tab-one", ["lmarena.ai"], issued_ms=1, expires=int(time.time()) - 1)
        fresh, expires = registration_tokens.issue("tab-one", ["lmarena.ai"])
    assert 86000 < expires - time.time() <= 86400
    refused = register(client, old)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "registration_token_expired"
    assert client.get(f"/userscript/tab-one.user.js?domains=lmarena.ai&token={old}").status_code == 401
    assert register(client, fresh).status_code == 201
    served = client.get(f"/userscript/tab-one.user.js?domains=lmarena.ai&token={fresh}")
    assert served.status_code == 200 and token_of(served.get_data(as_text=True)) == fresh  # never a new one


def test_revoking_a_sessions_tokens_stops_its_scripts_only(client, admin):
    first, other = token_of(generate(client)), token_of(generate(client, session_name="tab-two"))
    assert register(client, first).status_code == 201
    revoked = client.post("/session/lmarena.ai/tab-one/revoke-tokens", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["revoked"] is True

    refused = register(client, first)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "registration_token_revoked"
    beat = client.post(
        "/session/heartbeat",
        json={"domain": "lmarena.ai", "session_name": "tab-one"},
        headers={"X-Registration-Token": first},
    )
    assert beat.status_code == 401
    assert client.get(f"/userscript/tab-one.user.js?domains=lmarena.ai&token={first}").status_code == 401
    # The session itself stays; another session's tokens still work; a script generated now works.
    assert client.get("/session/lmarena.ai/tab-one", headers=admin).status_code == 200
    assert register(client, other, name="tab-two").status_code == 201
    assert register(client, token_of(generate(client))).status_code == 200


def test_revoking_needs_the_admin_key(client):
    token = token_of(generate(client))
    refused = client.post("/session/lmarena.ai/tab-one/revoke-tokens", headers={"X-Registration-Token": token})
    assert refused.status_code == 401
    assert register(client, token).status_code == 201


def _shared_revocation(first, second, name):
    """Revoke on one app; the other, on the same store, refuses the token within its half-second cache."""
    token = token_of(generate(first.test_client(), session_name=name))
    assert register(second.test_client(), token, name=name).status_code in (200, 201)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert first.test_client().post(f"/session/lmarena.ai/{name}/revoke-tokens", headers=admin).status_code == 200
    deadline = time.monotonic() + 5
    status = 201
    while time.monotonic() < deadline and status != 401:
        status = register(second.test_client(), token, name=name).status_code
        time.sleep(0.1)
    assert status == 401


def test_revocation_reaches_every_process_on_the_file_store(make_app):
    first = make_app()
    second = make_app()  # the same storage folder, as Passenger's processes share it
    _shared_revocation(first, second, "tab-one")


def test_revocation_and_bridge_keys_live_in_redis_in_redis_mode(bridge, redis_server, tmp_path, tabs):
    one, _ = tabs
    name = f"tab-{time.time_ns()}"  # the Redis server lives for the whole run
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
    apps = [
        create_app(
            app_settings(
                bridge.url,
                tmp_path / folder,
                SESSION_STORE="redis",
                REDIS_URL=redis_server.url,
                GATEWAY_USERSCRIPT_SECRET="shared by every instance",
            )
        )
        for folder in ("first", "second")
    ]
    first, second = apps
    try:
        # A script generated on one instance binds its session, key included, when it registers on another.
        script = generate(first.test_client(), session_name=name, bridge_base_url=one.url, bridge_api_key=TAB_KEY)
        registered = register(second.test_client(), token_of(script), name=name)
        assert registered.status_code == 201, registered.get_json()
        assert registered.get_json()["session"]["bridge_api_key_set"] is True
        _shared_revocation(first, second, name)
    finally:
        for app in apps:
            close_app(app)
