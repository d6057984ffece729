"""GET /openapi.json: valid OpenAPI 3.1, in step with the Flask routes, and true of the live gateway (schemathesis)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from app import create_app
from app.api.openapi import DOCUMENT, document
from app.config import SETTINGS
from app.version import __version__
from tests.conftest import ADMIN_KEY, BRIDGE_KEY, CLIENT_KEY, LiveServer, app_settings, close_app
from tests.upstreams.fake_bridge import FakeBridge

SPEC: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
CRON_TOKEN = "cron-test-token"
# Everything a Flask URL rule converter can look like: <name>, <converter:name>, <converter(args):name>.
CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


# --- the document itself ----------------------------------------------------------------------------------------


def test_openapi_is_valid_openapi_3_1():
    assert SPEC["openapi"] == "3.1.0"
    # Schemathesis checks the document against the OpenAPI 3.1 meta-schema it ships.
    schemathesis.openapi.from_dict(SPEC).validate()
    for name, schema in SPEC["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            pytest.fail(f"components/schemas/{name} is not JSON Schema 2020-12: {exc.message}")


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_refs_resolve_and_operation_ids_are_unique():
    for ref in set(_refs(SPEC)):
        assert ref.startswith("#/"), ref
        node: Any = SPEC
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]
    ids = [op["operationId"] for item in SPEC["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids)), "duplicate operationId"


def openapi_path(rule: str) -> str:
    """Return a Flask rule in OpenAPI's path syntax: <path:model_id> -> {model_id}."""
    return CONVERTER.sub(r"{\1}", rule)


@pytest.fixture
def app_operations(app) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation the Flask app serves, HEAD and OPTIONS aside."""
    return {
        (method, openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ("/v1/models/<path:model_id>", "/v1/models/{model_id}"),
        ("/userscript/<session_name>.user.js", "/userscript/{session_name}.user.js"),
        ("/session/<domain>/<name>", "/session/{domain}/{name}"),
        ("/health", "/health"),
    ],
)
def test_openapi_path_converts_flask_rules(rule, path):
    assert openapi_path(rule) == path


def test_openapi_documents_every_route_and_nothing_else(app_operations):
    documented = {
        (method.upper(), path) for path, item in SPEC["paths"].items() for method in item if method in METHODS
    }
    undocumented = sorted(f"{m} {p}" for m, p in app_operations - documented)
    unserved = sorted(f"{m} {p}" for m, p in documented - app_operations)
    assert not undocumented, f"served but missing from app/openapi.json: {undocumented}"
    assert not unserved, f"in app/openapi.json but not served by the app: {unserved}"


# --- serving it ---------------------------------------------------------------------------------------------------


def test_openapi_served_without_a_key_with_this_gateway_as_server(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    served = response.get_json()
    assert served["servers"] == [{"url": "http://localhost"}]
    assert served["info"]["version"] == __version__
    assert {k: v for k, v in served.items() if k not in ("servers", "info")} == {
        k: v for k, v in SPEC.items() if k not in ("servers", "info")
    }
    assert document() is document(), "the file is read once"


def test_openapi_server_follows_a_sub_uri(client):
    # The test client's base_url path is the WSGI SCRIPT_NAME, as under Passenger at a sub-URI.
    response = client.get("/openapi.json", base_url="http://localhost/gateway/")
    assert response.status_code == 200
    assert response.get_json()["servers"][0]["url"] == "http://localhost/gateway"


def test_openapi_server_is_the_public_url_when_set(make_app):
    client = make_app(GATEWAY_PUBLIC_URL="https://ai.example.com/gw").test_client()
    url = client.get("/openapi.json", base_url="http://gateway.internal/gw/").get_json()["servers"][0]["url"]
    assert url == "https://ai.example.com/gw"


def test_openapi_server_is_relative_when_the_host_makes_no_url(client):
    response = client.get("/openapi.json", headers={"Host": "bad host"}, base_url="http://localhost/gw/")
    assert response.status_code == 200
    assert response.get_json()["servers"][0]["url"] == "/gw"


# --- the live gateway against its document (schemathesis) ----------------------------------------------------------


def _on_the_fake_bridge(router, bridge_url: str) -> None:
    """Send every session's chats to the fake bridge with its key, whatever bridge_base_url and bridge_api_key a
    generated registration names."""
    make_bridge = router.bridges.factory

    def factory(url: str, api_key: str | None = None):
        # Built for its own URL and key first (nothing connects yet), so what the gateway cannot use still fails here.
        make_bridge(url, api_key).close()
        return make_bridge(bridge_url)

    router.bridges.factory = factory


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[LiveServer]:
    """Serve one gateway, on a fast fake bridge, for every live test of this module (a server per case is slow)."""
    bridge = FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.002, response_delay=0.002, hang_seconds=0.3)
    # Generated images as data: URLs, so b64_json answers never download anything.
    bridge.image_url = "data:image/png;base64,iVBORw0KGgo{:04d}"
    bridge.start()
    storage = tmp_path_factory.mktemp("openapi")
    # Module scope runs before conftest's per-test clean-up: keep the developer's settings out here too.
    with pytest.MonkeyPatch.context() as env:
        for setting in SETTINGS:
            env.delenv(setting.name, raising=False)
        env.delenv("GATEWAY_ENV_FILE", raising=False)
        app = create_app(
            app_settings(
                bridge.url,
                storage,
                GATEWAY_CRON_TOKEN=CRON_TOKEN,
                GATEWAY_BREAKER_FAILURES=1000,
            )
        )
    _on_the_fake_bridge(app.extensions["router"], bridge.url)
    server = LiveServer(app)
    yield server
    server.stop()
    close_app(app)
    bridge.stop()


def _config(**project: Any) -> schemathesis.Config:
    # A fixed seed and derandomized generation: CI sends the same cases every run.
    return schemathesis.Config.from_dict(
        {
            "seed": 20251123,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "request-timeout": 20,
            **project,
        }
    )


schema = schemathesis.openapi.from_dict(
    SPEC,
    config=_config(
        generation={"max-examples": 15, "deterministic": True, "database": "none", "mode": "all"},
        phases={"stateful": {"enabled": False}},
        # Valid keys for the schemes the tests know one for: most cases get past the 401.
        auth={
            "openapi": {
                "clientBearer": {"bearer": CLIENT_KEY},
                "adminBearer": {"bearer": ADMIN_KEY},
                "cronToken": {"api_key": CRON_TOKEN},
            }
        },
        checks={
            # 502-504 are documented upstream failures (the fake bridge's answers); the gateway's own 500 is not.
            "not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", "502", "503", "504"]},
            # Well-formed is not enough for a 2xx: a generated model or session name rarely exists.
            "positive_data_acceptance": {"enabled": False},
        },
        operations=[
            {
                # The generator form ignores every option until a session_name comes with them.
                "include-path-regex": "^/userscript/(advanced-)?generate$",
                "checks": {"negative_data_rejection": {"enabled": False}},
            }
        ],
    ),
)


def _assert_error_shape(response) -> None:
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body


def _call(label: str, gateway: LiveServer, **case: Any):
    """Send one hand-made case for an operation and check the answer against the document."""
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    response = operation.Case(**case).call_and_validate(base_url=gateway.url, allow_redirects=False)
    assert response.status_code != 500, response.text
    return response


def test_openapi_success_paths_conform(gateway):
    """Walk what generated data rarely reaches: a known model, streams, a registered session, a signed-in browser."""
    client, admin = {"Authorization": f"Bearer {CLIENT_KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    session = {"X-Session-Name": "openapi-live", "X-Target-Domain": "lmarena.ai"}
    chat = {"model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "Say hello."}]}
    registration = {
        "domain": "lmarena.ai",
        "session_name": "openapi-live",
        "session_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "message_id": "8c5e1f0a-2b7d-4c3e-9f1a-6d2b8e4c7a90",
        "bridge_base_url": "http://127.0.0.1:9",
        "models": {"gemini-2.5-pro": "e2d9d353-6dbe-4414-bf87-bd289d523726"},
    }
    stream = {**chat, "stream": True}
    image = {"model": "nano-banana", "prompt": "A lighthouse", "n": 2, "response_format": "b64_json"}
    form = {"body": {"admin_key": ADMIN_KEY, "window": "24h"}, "media_type": "application/x-www-form-urlencoded"}
    steps = [
        ("POST /session/register", {"body": registration, "headers": admin}, {200, 201}, "application/json"),
        ("POST /v1/chat/completions", {"body": chat, "headers": client}, {200}, "application/json"),
        ("POST /v1/chat/completions", {"body": stream, "headers": client}, {200}, "text/event-stream"),
        (
            "POST /v1/chat/completions",
            {"body": {**stream, "stream_options": {"include_usage": True}}, "headers": client | session},
            {200},
            "text/event-stream",
        ),
        ("GET /v1/models", {"headers": client | session}, {200}, "application/json"),
        ("POST /v1/images/generations", {"body": image, "headers": client}, {200}, "application/json"),
        ("POST /dashboard/login", form, {303}, ""),
    ]
    for label, case, statuses, media_type in steps:
        response = _call(label, gateway, **case)
        assert response.status_code in statuses, (label, response.text)
        assert response.headers.get("content-type", [""])[0].startswith(media_type), label


def test_openapi_hostile_inputs_conform(gateway):
    """Inputs generators rarely draw, each once a 500: they answer as documented."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # A digit str.isdigit() accepts and int() refuses, in the dashboard's sign-in cookie.
    response = _call("GET /dashboard", gateway, cookies={"gateway_dashboard": "\u00b2.x"})
    assert response.status_code == 401
    # A port no connection can use: refused at registration, not a 500 at the session's next chat.
    registration = {
        "domain": "lmarena.ai",
        "session_name": "openapi-port",
        "session_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "message_id": "8c5e1f0a-2b7d-4c3e-9f1a-6d2b8e4c7a90",
    }
    for port in ("99999", "-1", "http"):
        body = {**registration, "bridge_base_url": f"http://127.0.0.1:{port}"}
        response = _call("POST /session/register", gateway, body=body, headers=admin)
        assert response.status_code == 400, (port, response.text)


@pytest.mark.slow  # schemathesis: every operation, generated cases against a live gateway
@schema.parametrize()
def test_openapi_gateway_conforms(case, gateway):
    # waitress answers a transfer coding it does not know with 501 before the gateway sees the request (RFC 9112
    # section 6.1): the server's protocol answer, not the gateway's, so generated ones are left out.
    for name in [h for h in (case.headers or {}) if h.lower() == "transfer-encoding"]:
        del case.headers[name]
    response = case.call_and_validate(base_url=gateway.url, allow_redirects=False)
    assert response.status_code != 500, response.text
    if response.status_code >= 500:
        _assert_error_shape(response)


# Operations whose key is checked before anything else: without one, nothing but 401 may come back.
KEYED = r"^/(v1/|providers/|session/list|session/\{domain\}|analytics/(summary|sessions)$|cron/)"
unauthenticated = schemathesis.openapi.from_dict(
    SPEC,
    config=_config(
        generation={
            "max-examples": 3,
            "deterministic": True,
            "database": "none",
            "mode": "positive",
            "with-security-parameters": False,
        },
        phases={"examples": {"enabled": False}, "coverage": {"enabled": False}, "stateful": {"enabled": False}},
    ),
).include(path_regex=KEYED)


@pytest.mark.slow  # schemathesis against a live gateway
@unauthenticated.parametrize()
def test_openapi_keyed_operations_answer_401_without_a_key(case, gateway):
    response = case.call(base_url=gateway.url, allow_redirects=False)
    assert response.status_code == 401, response.text
    _assert_error_shape(response)
    checks = schemathesis.checks
    case.validate_response(
        response,
        checks=[checks.status_code_conformance, checks.content_type_conformance, checks.response_schema_conformance],
    )
