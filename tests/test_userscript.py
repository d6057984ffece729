"""Userscript generation: metadata, escaping, install page, and registration tokens scoped to one session."""

from __future__ import annotations

import json
import re

import pytest

from app import registration_tokens

SID, MID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"


def raw_script(client, admin, **params):
    params = {"session_name": "team-a", "domains": "lmarena.ai,canary.lmarena.ai", "format": "raw", **params}
    response = client.get("/userscript/generate", query_string=params, headers=admin)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def metadata(script: str) -> list[tuple[str, str]]:
    block = script.split("// ==UserScript==", 1)[1].split("// ==/UserScript==", 1)[0]
    return [tuple(line[3:].split(None, 1)) for line in block.strip().splitlines()]


def config_of(script: str) -> dict:
    return json.loads(re.search(r"const CONFIG = (\{.*\});", script).group(1))


def token_of(script: str) -> str:
    return config_of(script)["token"]


def test_script_metadata_lines(client, admin):
    meta = metadata(raw_script(client, admin))
    keys = [k for k, _ in meta]
    values = dict(meta)
    assert values["@name"] == "LMArena Gateway session: team-a"
    assert values["@namespace"] == "http://localhost"
    assert values["@version"] and values["@run-at"] == "document-start"
    assert [v for k, v in meta if k == "@match"] == ["https://canary.lmarena.ai/*", "https://lmarena.ai/*"]
    assert ("@grant", "GM_xmlhttpRequest") in meta and ("@grant", "unsafeWindow") in meta
    assert values["@connect"] == "localhost"
    assert values["@downloadURL"] == values["@updateURL"]
    assert values["@downloadURL"].startswith("http://localhost/userscript/team-a.user.js?")
    assert "token=v1." in values["@downloadURL"]
    assert keys.count("@match") == 2


def test_script_only_matches_chosen_domains(client, admin):
    meta = metadata(raw_script(client, admin, domains="beta.lmarena.ai"))
    assert [v for k, v in meta if k == "@match"] == ["https://beta.lmarena.ai/*"]
    assert config_of(raw_script(client, admin, domains="beta.lmarena.ai"))["domains"] == ["beta.lmarena.ai"]


def test_script_never_contains_the_admin_key(client, admin):
    script = raw_script(client, admin)
    assert "sk-admin-test" not in script
    assert "sk-gw-test" not in script and "sk-lmab-test" not in script


def test_script_values_are_json_encoded(make_app, admin):
    client = make_app(GATEWAY_PUBLIC_URL="https://gw.example/a'b\"</script>").test_client()
    script = raw_script(client, admin)
    config_line = next(line for line in script.splitlines() if "const CONFIG" in line)
    assert "</script>" not in config_line and "\\u003c/script\\u003e" in config_line
    assert config_of(script)["gateway_url"] == "https://gw.example/a'b\"</script>"


HOSTILE_NAMES = ['a";alert(1);//', "</script>", "../x", "a\nb", "x" * 65, "", "a b", "é"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_session_names_are_rejected(client, admin, name):
    response = client.get("/userscript/generate", query_string={"session_name": name, "format": "raw"}, headers=admin)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "session_name"


@pytest.mark.parametrize("domains", ["evil.com", "lmarena.ai,evil.com", "lmarena.ai\n// @match https://*/*"])
def test_hostile_domains_are_rejected(client, admin, domains):
    response = client.get(
        "/userscript/generate", headers=admin, query_string={"session_name": "a", "domains": domains, "format": "raw"}
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "domains"


def test_accept_javascript_returns_the_script(client, admin):
    response = client.get("/userscript/generate?session_name=a", headers={**admin, "Accept": "text/javascript"})
    assert response.mimetype == "text/javascript"
    assert response.get_data(as_text=True).startswith("// ==UserScript==")


def test_generating_needs_the_admin_key(client):
    response = client.get("/userscript/generate?session_name=a&format=raw")
    assert response.status_code == 401
    page = client.post("/userscript/generate", data={"session_name": "a", "admin_key": "wrong"})
    assert page.status_code == 401 and b"not right" in page.data and b"v1." not in page.data


def test_install_page_works_without_javascript(client):
    form = client.get("/userscript/generate")
    assert form.status_code == 200 and form.mimetype == "text/html"
    assert b"<script" not in form.data
    assert "script-src" not in form.headers["Content-Security-Policy"]  # no script may run on it at all
    assert form.headers["X-Content-Type-Options"] == "nosniff"
    page = client.post(
        "/userscript/generate", data={"session_name": "team-a", "domains": ["lmarena.ai"], "admin_key": "sk-admin-test"}
    )
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    install = re.search(r'href="(/userscript/team-a\.user\.js\?[^"]+)"', html).group(1)
    assert "token=v1." in install
    assert "// ==UserScript==" in html  # the preview
    assert "sk-admin-test" not in html


def test_install_page_escapes_what_it_echoes(client):
    page = client.post(
        "/userscript/generate", data={"session_name": "<img src=x onerror=alert(1)>", "admin_key": "sk-admin-test"}
    )
    assert page.status_code == 400
    assert b"<img src=x" not in page.data and b"&lt;img src=x" in page.data


def test_advanced_page_offers_and_applies_options(client, admin):
    form = client.get("/userscript/advanced-generate")
    assert all(word in form.data for word in (b"heartbeat", b"auto_retry", b"persist", b"debug"))
    script = client.get(
        "/userscript/advanced-generate",
        headers=admin,
        query_string={
            "session_name": "a",
            "heartbeat": "15",
            "debug": "1",
            "auto_retry": "0",
            "persist": "0",
            "format": "raw",
        },
    )
    config = config_of(script.get_data(as_text=True))
    assert (config["heartbeat_seconds"], config["debug"], config["auto_retry"], config["persist"]) == (
        15,
        True,
        False,
        False,
    )
    bad = client.get("/userscript/advanced-generate?session_name=a&heartbeat=1&format=raw", headers=admin)
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "heartbeat"


def test_install_link_serves_the_script_with_its_token_only(client, admin):
    script = raw_script(client, admin, domains="lmarena.ai")
    url = dict(metadata(script))["@downloadURL"].removeprefix("http://localhost")
    served = client.get(url)
    assert served.status_code == 200 and served.mimetype == "text/javascript"
    assert token_of(served.get_data(as_text=True)) == token_of(script)
    assert client.get(url.replace("team-a.user.js", "team-b.user.js")).status_code == 401
    assert client.get(url.replace("domains=lmarena.ai", "domains=beta.lmarena.ai")).status_code == 401
    assert client.get(url.split("&token=")[0]).status_code == 401


def register(client, token, **body):
    data = {"domain": "lmarena.ai", "session_name": "team-a", "session_id": SID, "message_id": MID, **body}
    return client.post("/session/register", json=data, headers={"X-Registration-Token": token})


def test_token_registers_and_heartbeats_its_own_session_only(client, admin):
    token = token_of(raw_script(client, admin, domains="lmarena.ai"))
    assert register(client, token).status_code == 201
    beat = client.post(
        "/session/heartbeat",
        json={"domain": "lmarena.ai", "session_name": "team-a"},
        headers={"X-Registration-Token": token},
    )
    assert beat.status_code == 200
    other_name = register(client, token, session_name="team-b")
    assert other_name.status_code == 403 and other_name.get_json()["error"]["type"] == "permission_error"
    assert register(client, token, domain="beta.lmarena.ai").status_code == 403
    assert client.get("/session/list", headers={"X-Registration-Token": token}).status_code == 401
    assert client.delete("/session/lmarena.ai/team-a", headers={"X-Registration-Token": token}).status_code == 401


def test_token_may_say_where_the_ids_came_from(client, admin):
    token = token_of(raw_script(client, admin))
    registered = register(client, token, ids_source="bridge_job")
    assert registered.status_code == 201 and registered.get_json()["session"]["ids_source"] == "bridge_job"
    refused = register(client, token, ids_source="admin")
    assert refused.status_code == 400 and refused.get_json()["error"]["param"] == "ids_source"
    shown = client.get("/session/lmarena.ai/team-a", headers=admin).get_json()["session"]
    assert shown["ids_source"] == "bridge_job"


def test_tampered_or_rotated_tokens_are_refused(make_app, client, admin):
    token = token_of(raw_script(client, admin))
    prefix, payload, signature = token.split(".")
    forged_payload = registration_tokens._b64(json.dumps({"n": "team-b", "d": ["lmarena.ai"]}).encode())
    assert register(client, f"{prefix}.{forged_payload}.{signature}", session_name="team-b").status_code == 401
    assert register(client, token[:-2] + "xx").status_code == 401
    rotated = make_app(GATEWAY_USERSCRIPT_SECRET="a brand new secret").test_client()
    refused = register(rotated, token)
    assert refused.status_code == 401 and refused.get_json()["error"]["code"] == "invalid_registration_token"


def test_token_cannot_point_the_gateway_elsewhere_but_keeps_admin_settings(client, admin):
    token = token_of(raw_script(client, admin))
    assert register(client, token, bridge_base_url="http://127.0.0.1:1").status_code == 403
    assert register(client, token, models={"x": "y"}).status_code == 403
    assert register(client, token, bridge_api_key="sk-token-set").status_code == 403
    assert register(client, token, bridge_api_key="").status_code == 403  # nor remove the admin's
    admin_set = {"bridge_base_url": "http://127.0.0.1:5202", "models": {"gpt-5": "983bc566"}}
    key = {"bridge_api_key": "sk-admin-set"}
    assert (
        client.post(
            "/session/register",
            headers=admin,
            json={
                "domain": "lmarena.ai",
                "session_name": "team-a",
                "session_id": SID,
                "message_id": MID,
                **admin_set,
                **key,
            },
        ).status_code
        == 201
    )
    new_mid = "5fa85f64-5717-4562-b3fc-2c963f66afa8"
    session = register(client, token, message_id=new_mid).get_json()["session"]
    assert session["message_id"] == new_mid
    assert {k: session[k] for k in admin_set} == admin_set
    assert session["bridge_api_key_set"] is True


def test_sub_uri_deployment_keeps_the_prefix_once(client, admin):
    response = client.get(
        "/userscript/generate",
        headers=admin,
        base_url="http://localhost/gw/",
        query_string={"session_name": "a", "format": "raw"},
    )
    script = response.get_data(as_text=True)
    assert config_of(script)["gateway_url"] == "http://localhost/gw"
    assert dict(metadata(script))["@downloadURL"].startswith("http://localhost/gw/userscript/a.user.js?")


def test_open_gateway_serves_scripts_without_a_key(make_app):
    client = make_app(GATEWAY_ADMIN_KEY="").test_client()
    script = client.get("/userscript/generate?session_name=a&format=raw")
    assert script.status_code == 200
    assert client.get("/userscript/a.user.js").status_code == 200


@pytest.mark.parametrize(
    "host", ['evil.example"});alert(1);//', "a.example</script><script>alert(1)</script>", "a.example'x", "a b"]
)
def test_hostile_host_headers_never_reach_the_script(client, admin, host):
    answer = client.get(
        "/userscript/generate", query_string={"session_name": "a", "format": "raw"}, headers={**admin, "Host": host}
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"]["message"].endswith("set GATEWAY_PUBLIC_URL.")
    assert "alert" not in answer.get_data(as_text=True)
