"""Guards: which credential each blueprint takes, and the dashboard cookie under its own secret."""

from __future__ import annotations

import hashlib
import hmac
import os
import time

import pytest
import urllib3

from app import auth, registration_tokens
from app.config import storage_file
from tests.conftest import ADMIN_KEY, CLIENT_KEY

CRON = "cron-token-for-auth-tests"
METRICS = "metrics-token-for-auth-tests"
BEARER_ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BEARER_CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
WRONG = {"Authorization": "Bearer sk-wrong"}
NO_ADMIN = "This endpoint needs the admin key: 'Authorization: Bearer <GATEWAY_ADMIN_KEY>'."
NO_METRICS = "Missing or wrong metrics token ('Authorization: Bearer <GATEWAY_METRICS_TOKEN>')."


@pytest.fixture
def gateway(make_app):
    return make_app(GATEWAY_CRON_TOKEN=CRON, GATEWAY_METRICS_TOKEN=METRICS)


def script_link_token(app, name: str = "team-a") -> str:
    return registration_tokens.mint(app.extensions["regtoken_secret"], name, ["lmarena.ai"])


# One representative endpoint per blueprint, each credential it takes and some it must refuse.
CASES = [
    ("GET", "/v1/models", BEARER_CLIENT, 200, None),
    ("GET", "/v1/models", {"X-API-Key": CLIENT_KEY}, 200, None),
    ("GET", "/v1/models", {}, 401, "Missing API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."),
    ("GET", "/v1/models", WRONG, 401, "Incorrect API key provided."),
    ("GET", "/v1/models", BEARER_ADMIN, 401, "Incorrect API key provided."),
    ("GET", "/providers/status", BEARER_ADMIN, 200, None),
    ("GET", "/providers/status", {"X-Admin-Key": ADMIN_KEY}, 200, None),
    ("GET", "/providers/status", {}, 401, NO_ADMIN),
    ("GET", "/providers/status", BEARER_CLIENT, 401, "Incorrect admin key provided."),
    ("GET", "/session/list", {"X-API-Key": ADMIN_KEY}, 200, None),
    ("GET", "/session/list", WRONG, 401, "Incorrect admin key provided."),
    ("GET", "/analytics/summary", BEARER_ADMIN, 200, None),
    ("GET", "/analytics/summary", {}, 401, NO_ADMIN),
    ("GET", "/metrics", {"Authorization": f"Bearer {METRICS}"}, 200, None),
    ("GET", "/metrics", BEARER_ADMIN, 401, NO_METRICS),
    ("POST", "/cron/cleanup?dry_run=1", {"X-Cron-Token": CRON}, 200, None),
    ("GET", f"/cron/cleanup?dry_run=1&token={CRON}", {}, 200, None),
    ("POST", "/cron/cleanup", BEARER_ADMIN, 401, "Missing or wrong cron token (send it as the X-Cron-Token header)."),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "headers", "status", "message"), CASES)
def test_guard_takes_its_blueprints_credential_only(gateway, method, path, headers, status, message):
    response = gateway.test_client().open(path, method=method, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if message is not None:
        assert response.get_json()["error"]["message"] == message
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="lmarena-gateway"'


def test_guard_error_codes_are_unchanged(gateway, make_app):
    client = gateway.test_client()
    assert client.get("/v1/models").get_json()["error"]["code"] == "invalid_api_key"
    assert client.get("/cron/cleanup").get_json()["error"]["code"] == "invalid_cron_token"
    disabled = make_app().test_client().get("/cron/cleanup", headers={"X-Cron-Token": CRON})
    assert disabled.status_code == 403 and disabled.get_json()["error"]["code"] == "cron_disabled"


def test_guard_lets_preflights_through(gateway):
    client = gateway.test_client()
    for path in ("/v1/models", "/providers/status", "/session/list", "/cron/cleanup", "/metrics", "/dashboard"):
        assert client.options(path).status_code == 200, path


def test_guard_names_only_views_of_its_blueprint(gateway):
    guards = {
        blueprint: hook
        for blueprint, hooks in gateway.before_request_funcs.items()
        for hook in hooks
        if isinstance(hook, auth.Guard)
    }
    assert {"v1", "providers", "admin", "analytics", "sessions", "dashboard"} <= set(guards)
    endpoints = set(gateway.view_functions)
    for blueprint, guard in guards.items():
        assert guard.needs in auth.CHECKS
        for view, needs in guard.views.items():
            assert f"{blueprint}.{view}" in endpoints, (blueprint, view)
            assert needs is None or needs in auth.CHECKS


def test_open_gateway_asks_for_no_key(make_app):
    client = make_app(GATEWAY_API_KEYS="", GATEWAY_ADMIN_KEY="").test_client()
    assert client.get("/v1/models").status_code == 200
    assert client.get("/providers/status").status_code == 200
    assert client.get("/dashboard").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_registration_token_is_taken_by_session_calls_only(gateway):
    client = gateway.test_client()
    token = {"X-Registration-Token": script_link_token(gateway)}
    beat = client.post("/session/heartbeat", json={"domain": "lmarena.ai", "session_name": "team-a"}, headers=token)
    assert beat.status_code == 404  # past the guard: the session is simply not registered yet
    assert client.get("/session/list", headers=token).status_code == 401
    assert client.get("/providers/status", headers=token).status_code == 401
    assert client.get("/analytics/summary", headers=token).status_code == 401


def test_script_link_takes_only_its_own_token(gateway):
    client = gateway.test_client()
    link = "/userscript/team-a.user.js?domains=lmarena.ai"
    token = script_link_token(gateway)
    served = client.get(f"{link}&token={token}")
    assert served.status_code == 200 and token in served.get_data(as_text=True)
    refused = client.get(link)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_registration_token"
    assert client.get(f"{link}&token={script_link_token(gateway, 'team-b')}").status_code == 401
    # The link never mints a token, not even for the admin: /userscript/generate does that.
    assert client.get(link, headers=BEARER_ADMIN).status_code == 401


def test_userscript_generator_takes_the_admin_key_from_form_or_header(gateway):
    client = gateway.test_client()
    query = {"session_name": "team-a", "format": "raw"}
    assert client.get("/userscript/generate", query_string=query, headers={"X-Admin-Key": ADMIN_KEY}).status_code == 200
    assert client.post("/userscript/generate", data={**query, "admin_key": ADMIN_KEY}).status_code == 200
    # The key belongs in the form's body, never in a URL that proxies log.
    assert client.get("/userscript/generate", query_string={**query, "admin_key": ADMIN_KEY}).status_code == 401


def sign_in(client) -> str:
    response = client.post("/dashboard/login", data={"admin_key": ADMIN_KEY})
    assert response.status_code == 303
    return client.get_cookie(auth.COOKIE, path="/dashboard").value


def test_dashboard_takes_a_header_key_or_its_cookie(gateway):
    client = gateway.test_client()
    page = client.get("/dashboard")
    assert page.status_code == 401 and page.mimetype == "text/html" and "WWW-Authenticate" not in page.headers
    assert client.get("/dashboard", headers=BEARER_ADMIN).status_code == 200
    sign_in(client)
    assert client.get("/dashboard").status_code == 200
    # A wrong key in a header decides on its own, cookie or not.
    assert client.get("/dashboard", headers=WRONG).status_code == 401


def test_cookie_is_signed_with_the_dashboard_secret(gateway):
    cookie = sign_in(gateway.test_client())
    expires, signature = cookie.split(".")
    with open(storage_file(gateway.config, "dashboard.secret"), "rb") as f:
        secret = f.read().strip()
    admin = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    assert signature == hmac.new(secret, f"dashboard.{expires}.{admin}".encode(), hashlib.sha256).hexdigest()
    assert secret != gateway.extensions["regtoken_secret"]


def test_cookie_signed_with_the_registration_secret_is_refused(gateway):
    client = gateway.test_client()
    expires = int(time.time()) + 3600
    forged = auth.sign_cookie(gateway.extensions["regtoken_secret"], ADMIN_KEY, expires)
    client.set_cookie(auth.COOKIE, forged, path="/dashboard")
    assert client.get("/dashboard").status_code == 401
    genuine = auth.sign_cookie(gateway.extensions["dashboard_secret"], ADMIN_KEY, expires)
    client.set_cookie(auth.COOKIE, genuine, path="/dashboard")
    assert client.get("/dashboard").status_code == 200


def test_dashboard_secret_is_generated_once_and_reused(make_app):
    first = make_app()
    path = storage_file(first.config, "dashboard.secret")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "rb") as f:
        written = f.read()
    cookie = sign_in(first.test_client())
    again = make_app()  # a second process on the same storage folder
    with open(path, "rb") as f:
        assert f.read() == written
    assert again.extensions["dashboard_secret"] == first.extensions["dashboard_secret"]
    client = again.test_client()
    client.set_cookie(auth.COOKIE, cookie, path="/dashboard")
    assert client.get("/dashboard").status_code == 200


def test_changing_the_dashboard_secret_signs_the_old_cookie_out(make_app):
    first = make_app()
    cookie = sign_in(first.test_client())
    client = make_app(GATEWAY_DASHBOARD_SECRET="a brand new dashboard secret").test_client()
    client.set_cookie(auth.COOKIE, cookie, path="/dashboard")
    assert client.get("/dashboard").status_code == 401
    sign_in(client)  # once: the new cookie is good
    assert client.get("/dashboard").status_code == 200
    # Deleting the generated file is the other way to change it.
    os.remove(storage_file(first.config, "dashboard.secret"))
    regenerated = make_app().test_client()
    regenerated.set_cookie(auth.COOKIE, cookie, path="/dashboard")
    assert regenerated.get("/dashboard").status_code == 401


def test_each_secret_signs_one_thing(make_app):
    app = make_app()
    cookie = sign_in(app.test_client())
    token = script_link_token(app)
    link = f"/userscript/team-a.user.js?domains=lmarena.ai&token={token}"
    # Revoking every userscript keeps browsers signed in; signing browsers out keeps every userscript working.
    new_tokens = make_app(GATEWAY_USERSCRIPT_SECRET="revoke every script").test_client()
    new_tokens.set_cookie(auth.COOKIE, cookie, path="/dashboard")
    assert new_tokens.get("/dashboard").status_code == 200
    assert new_tokens.get(link).status_code == 401
    new_cookies = make_app(GATEWAY_DASHBOARD_SECRET="sign every browser out").test_client()
    assert new_cookies.get(link).status_code == 200


def test_configured_dashboard_secret_writes_no_file(make_app):
    app = make_app(GATEWAY_DASHBOARD_SECRET="from the environment")
    assert app.extensions["dashboard_secret"] == b"from the environment"
    assert not os.path.exists(storage_file(app.config, "dashboard.secret"))


def test_signing_in_over_http_keeps_the_browser_in(serve):
    server = serve()
    with urllib3.PoolManager() as http:
        signed = http.request(
            "POST", server.url + "/dashboard/login", fields={"admin_key": ADMIN_KEY}, encode_multipart=False,
            redirect=False,
        )  # fmt: skip
        assert signed.status == 303
        cookie = signed.headers["Set-Cookie"].split(";", 1)[0]
        assert cookie.startswith(f"{auth.COOKIE}=")
        assert http.request("GET", server.url + "/dashboard", headers={"Cookie": cookie}).status == 200
        assert http.request("GET", server.url + "/dashboard").status == 401
