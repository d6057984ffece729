"""The APISIX front in apisix/: complete for the gateway's routes, and valid for APISIX without running it.

The schemas in tests/data/apisix/ are transcribed from Apache APISIX 3.18.0's source: apisix/schema_def.lua (route,
upstream, health checks, consumer, global rule, the `_meta` every plugin accepts), apisix/plugins/<name>.lua (and
limit-count/init.lua, ip-restriction/init.lua), and apisix/cli/schema.lua + apisix/cli/config.lua for config.yaml.
They are stricter than APISIX in one way on purpose: an unknown field is an error everywhere (APISIX ignores unknown
plugin fields silently, which is how typos go unnoticed).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
APISIX_DIR = ROOT / "apisix"
SCHEMA_DIR = ROOT / "tests" / "data" / "apisix"

# apisix/cli/file.lua var_sub: `${{NAME}}` or `${{NAME:=default}}`, replaced in the raw text before parsing.
ENV_REF = re.compile(r"\$\{\{\s*([A-Za-z0-9_]+)(?::=\s*(.*?))?\s*\}\}")
# What the test substitutes for variables without a default (any value would do; these are not keys).
TEST_ENV = {"APISIX_CLIENT_KEY": "test-client-key", "APISIX_ADMIN_KEY": "test-admin-key"}
SECRET_VARS = {"APISIX_CLIENT_KEY", "APISIX_ADMIN_KEY"}

STREAMING_PATHS = ["/v1/chat/completions"]
# Plugins that read or rewrite the response body, hold it back, compress it, or cache it: none may run on a
# streaming route (or in a global rule).
BODY_BUFFERING_PLUGINS = {
    "response-rewrite",
    "body-transformer",
    "gzip",
    "brotli",
    "proxy-cache",
    "ai-cache",
    "data-mask",
    "degraphql",
    "grpc-transcode",
    "serverless-post-function",
    "ext-plugin-post-resp",
}
LOOPBACK_ONLY = {"127.0.0.0/8", "127.0.0.1", "::1", "::1/128"}


# --- the transcribed schemas (tests/data/apisix/) ---------------------------------------------------------------


def _data(name: str) -> dict:
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))


# route, upstream, consumer, global_rule, standalone and what they share; `{"$ref": "#/definitions/<name>"}` in any
# schema below points here.
DEFINITIONS: dict[str, dict] = _data("schema_def.json")["definitions"]
_PLUGINS = _data("plugins.json")
PLUGIN_SCHEMAS: dict[str, dict] = _PLUGINS["plugins"]
CONSUMER_PLUGIN_SCHEMAS: dict[str, dict] = _PLUGINS["consumer_plugins"]

_CONFIG_YAML = _data("config_yaml.json")
CONFIG_SCHEMA: dict = _CONFIG_YAML["schema"]
CONFIG_TOP = set(_CONFIG_YAML["top_level"])
CONFIG_LISTS = set(_CONFIG_YAML["lists"])
CONFIG_SNIPPETS = set(_CONFIG_YAML["snippets"])
# Each scalar setting's type; None for the settings config.yaml.example only shows commented (no default).
_TYPES = {"boolean": bool, "string": str, "integer": int, None: None}
CONFIG_SCALARS: dict[str, type | None] = {path: _TYPES[kind] for path, kind in _CONFIG_YAML["scalars"].items()}


def strict(schema: Any) -> Any:
    """Return schema with additionalProperties false on every object type that lists its properties."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and not {"additionalProperties", "patternProperties"} & set(schema)
    ):
        out["additionalProperties"] = False
    return out


def errors(schema: dict, instance: Any, tighten: bool = True) -> list[str]:
    """Validation errors of instance, with unknown fields rejected unless tighten is false."""
    document = {"definitions": DEFINITIONS, "allOf": [schema]}  # so that the schema's $refs resolve
    checked = strict(document) if tighten else document
    validator = Draft7Validator(checked, format_checker=Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(instance)]


# --- loading -------------------------------------------------------------------------------------------------


def substitute(text: str, env: dict[str, str]) -> str:
    """Replace ${{VAR}} / ${{VAR:=default}} as APISIX does before parsing; a missing variable is an error."""

    def one(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise AssertionError(f"APISIX would refuse to start: environment variable {name} is not set")

    return ENV_REF.sub(one, text)


RAW_ROUTES = (APISIX_DIR / "apisix.yaml").read_text(encoding="utf-8")
RAW_CONFIG = (APISIX_DIR / "config.yaml").read_text(encoding="utf-8")


def load_routes(env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(substitute(RAW_ROUTES, TEST_ENV if env is None else env))


@pytest.fixture(scope="module")
def conf() -> dict:
    return load_routes()


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(RAW_CONFIG)


def routes_of(conf: dict) -> list[dict]:
    return conf["routes"]


def plugin_holders(conf: dict) -> list[tuple[str, dict]]:
    """Every (where, plugins) pair of routes and global rules (consumers are checked on their own)."""
    holders = [(f"route {r.get('id')}", r.get("plugins") or {}) for r in conf["routes"]]
    holders += [(f"global rule {g.get('id')}", g.get("plugins") or {}) for g in conf.get("global_rules") or []]
    return holders


# --- APISIX's route matching (lua-resty-radixtree as APISIX documents it in router-radixtree.md) ------------------


def uris(route: dict) -> list[str]:
    return route.get("uris") or [route["uri"]]


def uri_matches(pattern: str, path: str) -> bool:
    """A full path matches itself; a trailing `*` makes the rest a prefix (`/blog/bar*` matches `/blog/bar`)."""
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


def match_route(routes: list[dict], path: str, method: str) -> dict | None:
    """The route APISIX picks: full match over prefix, deeper prefix over shallower, then higher `priority`."""
    best: tuple | None = None
    chosen = None
    for route in routes:
        if route.get("status", 1) == 0:
            continue
        if route.get("methods") and method not in route["methods"]:
            continue
        for pattern in uris(route):
            if uri_matches(pattern, path):
                full = not pattern.endswith("*")
                rank = (full, math.inf if full else len(pattern), route.get("priority", 0))
                if best is None or rank > best:
                    best, chosen = rank, route
    return chosen


def test_matcher_follows_apisix_documentation():
    """The example table of docs/en/latest/router-radixtree.md, and `priority` between equal uris."""
    routes = [
        {"id": "p", "uri": "/blog/foo/*"},
        {"id": "a", "uri": "/blog/foo/a/*"},
        {"id": "c", "uri": "/blog/foo/c/*"},
        {"id": "bar", "uri": "/blog/foo/bar"},
    ]

    def hit(path: str) -> str | None:
        route = match_route(routes, path, "GET")
        return route["id"] if route else None

    assert hit("/blog/foo/bar") == "bar"
    assert hit("/blog/foo/a/b/c") == "a"
    assert hit("/blog/foo/c/d") == "c"
    assert hit("/blog/foo/gloo") == "p"
    assert hit("/blog/bar") is None
    assert uri_matches("/blog/bar*", "/blog/bar") and uri_matches("/blog/bar*", "/blog/bar/a")
    low, high = {"id": "low", "uri": "/hello", "priority": 2}, {"id": "high", "uri": "/hello", "priority": 3}
    assert match_route([low, high], "/hello", "GET")["id"] == "high"
    assert match_route([{"id": "m", "uri": "/x", "methods": ["POST"]}], "/x", "GET") is None


# --- the files ------------------------------------------------------------------------------------------------


def test_files_parse_and_apisix_yaml_ends_with_end_marker(conf, config):
    # apisix/core/config_yaml.lua reads the last 10 bytes and requires them to match `#END\s*$`.
    assert re.search(r"#END\s*$", RAW_ROUTES[-10:]), "apisix.yaml must end with #END or APISIX ignores it"
    assert isinstance(conf, dict) and isinstance(config, dict)
    assert errors(DEFINITIONS["standalone"], conf) == []


def test_env_references_are_known_documented_and_exported(config):
    names = {m.group(1) for m in ENV_REF.finditer(RAW_ROUTES)}
    assert names, "apisix.yaml should take its keys from the environment"
    readme = (APISIX_DIR / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert name in readme, f"{name} is not explained in apisix/README.md"
        # Newer APISIX exports the variables it substituted itself; nginx_config.envs covers older 3.x.
        assert name in config["nginx_config"]["envs"], f"{name} missing from nginx_config.envs in config.yaml"
    # A required variable that is unset stops APISIX, as the test's substitute() does.
    with pytest.raises(AssertionError, match="APISIX_CLIENT_KEY"):
        load_routes({})


def test_config_yaml_is_standalone_data_plane_with_prometheus_export(config):
    # Unknown settings are caught by test_config_yaml_settings_exist_and_have_apisix_types.
    assert errors(CONFIG_SCHEMA, config, tighten=False) == []
    assert set(config) <= CONFIG_TOP, f"unknown top-level settings: {set(config) - CONFIG_TOP}"
    assert config["deployment"]["role"] == "data_plane"
    assert config["deployment"]["role_data_plane"]["config_provider"] == "yaml"
    export = config["plugin_attr"]["prometheus"]
    assert export["enable_export_server"] is True
    assert ipaddress.ip_address(export["export_addr"]["ip"]).is_loopback, "APISIX metrics must stay on loopback"
    assert export["export_uri"].startswith("/")
    control = config["apisix"].get("control")
    if config["apisix"].get("enable_control", True) and control:
        assert ipaddress.ip_address(control["ip"]).is_loopback


def _leaves(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else key)
    else:
        yield path, node


def test_config_yaml_settings_exist_and_have_apisix_types(config):
    for path, value in _leaves(config):
        if path.startswith("nginx_config.") and path.rsplit(".", 1)[-1] in CONFIG_SNIPPETS:
            continue
        if path in CONFIG_LISTS:
            assert isinstance(value, list), path
            continue
        assert path in CONFIG_SCALARS, f"{path} is not a setting this test knows from apisix/cli/config.lua"
        expected = CONFIG_SCALARS[path]
        if expected is None:
            continue
        # apisix/cli/file.lua merge_conf: nginx_config numbers and strings may replace each other.
        if path.startswith("nginx_config.") and isinstance(value, int | str) and not isinstance(value, bool):
            continue
        assert type(value) is expected, f"{path}: APISIX expects {expected.__name__}, got {type(value).__name__}"


def test_nginx_does_not_buffer_or_compress_streams(config):
    nginx = config.get("nginx_config") or {}
    for name in CONFIG_SNIPPETS:
        snippet = (nginx.get(name) or "").lower()
        assert not re.search(r"\bgzip\s+on\b", snippet), f"{name} turns gzip on"
        assert not re.search(r"\bproxy_buffering\s+on\b", snippet), f"{name} turns proxy_buffering on"
        assert "proxy_ignore_headers" not in snippet, f"{name} could make nginx ignore X-Accel-Buffering"
    assert not {"gzip", "brotli"} & set(config["plugins"]), "a compression plugin would buffer SSE chunks"


# --- coverage of the gateway's routes ---------------------------------------------------------------------------


@pytest.fixture
def flask_rules(tmp_path):
    """(rule, methods) of every URL rule the gateway serves (function-scoped: after conftest clears the env)."""
    gateway = create_app({"TESTING": True, "GATEWAY_ENV_FILE": "", "STORAGE_PATH": str(tmp_path / "sessions.json")})
    try:
        rules = [(rule.rule, sorted(rule.methods or ())) for rule in gateway.url_map.iter_rules()]
    finally:
        gateway.extensions["router"].close()
    assert rules, "the gateway serves no routes?"
    return rules


def sample_path(rule: str) -> str:
    """A concrete path for a Flask rule: each <converter:name> becomes a plain segment."""
    return re.sub(r"<[^>]+>", "sample-1", rule)


def test_every_gateway_route_is_served_by_apisix(conf, flask_rules):
    routes = routes_of(conf)
    for route in routes:
        for pattern in uris(route):
            assert pattern.startswith("/"), pattern
            # The matcher above models full paths and a trailing `*`; `:param` and `*name` are not modelled.
            assert ":" not in pattern and "*" not in pattern[:-1], f"route {route['id']}: {pattern} not modelled"
            assert pattern not in ("/*", "*"), "a catch-all route would hide unprotected endpoints"
    missing = [
        f"{method} {rule}"
        for rule, methods in flask_rules
        for method in methods
        if match_route(routes, sample_path(rule), method) is None
    ]
    assert not missing, f"no APISIX route for: {missing}; add one to apisix/apisix.yaml"


def route_for(conf: dict, path: str, method: str = "GET") -> dict:
    route = match_route(routes_of(conf), path, method)
    assert route is not None, f"no route for {method} {path}"
    return route


def test_v1_needs_a_client_key_with_a_per_consumer_quota_and_cors(conf, flask_rules):
    v1_paths = [sample_path(rule) for rule, _ in flask_rules if rule.startswith("/v1/")]
    assert "/v1/chat/completions" in v1_paths
    for path in v1_paths:
        plugins = route_for(conf, path, "POST")["plugins"]
        assert {"key-auth", "consumer-restriction", "limit-count", "cors", "prometheus"} <= set(plugins), path
        assert plugins["key-auth"].get("hide_credentials") is not True, "the gateway needs the Bearer key too"
        assert plugins["key-auth"].get("header") == "Authorization"
        assert plugins["consumer-restriction"]["whitelist"] == ["client"]
        assert plugins["limit-count"]["key"] == "consumer_name"


@pytest.mark.parametrize("path", ["/session/list", "/session/lmarena.ai/team-a", "/providers/status"])
def test_management_needs_the_admin_consumer(conf, path):
    plugins = route_for(conf, path)["plugins"]
    assert "key-auth" in plugins and plugins["consumer-restriction"]["whitelist"] == ["admin"], path
    assert {"limit-count", "limit-req"} & set(plugins), path
    v1_quota = route_for(conf, "/v1/models")["plugins"]["limit-count"]
    quota = plugins["limit-count"]
    assert quota["count"] / quota["time_window"] < v1_quota["count"] / v1_quota["time_window"], "admin is tighter"


@pytest.mark.parametrize("path", ["/session/register", "/session/heartbeat", "/analytics/event"])
def test_userscript_session_calls_pass_to_the_gateway_rate_limited(conf, path):
    # The userscript sends a scoped X-Registration-Token, never a key APISIX knows; the gateway checks it.
    plugins = route_for(conf, path, "POST")["plugins"]
    assert "key-auth" not in plugins
    assert {"limit-req", "limit-count"} <= set(plugins)


@pytest.mark.parametrize("path", ["/cron/cleanup", "/metrics"])
def test_cron_and_metrics_are_loopback_only(conf, path):
    plugins = route_for(conf, path)["plugins"]
    allowed = plugins["ip-restriction"]["whitelist"]
    assert set(allowed) <= LOOPBACK_ONLY, f"{path} allows {allowed}"
    for entry in allowed:
        assert ipaddress.ip_network(entry, strict=False).subnet_of(
            ipaddress.ip_network("127.0.0.0/8" if "." in entry else "::1/128")
        )


@pytest.mark.parametrize("path", ["/", "/health", "/userscript/generate", "/userscript/team-a.user.js"])
def test_public_routes_are_open_but_rate_limited(conf, path):
    plugins = route_for(conf, path)["plugins"]
    assert not {"key-auth", "ip-restriction"} & set(plugins), path
    assert {"limit-count", "limit-req"} & set(plugins), path


def test_every_route_is_rate_limited_and_measured(conf):
    for route in routes_of(conf):
        plugins = route.get("plugins") or {}
        assert {"limit-count", "limit-req"} & set(plugins), f"route {route['id']} has no rate limit"
        assert "prometheus" in plugins, f"route {route['id']} is missing from APISIX's metrics"


# --- validity -------------------------------------------------------------------------------------------------


def test_routes_validate_and_reference_what_exists(conf):
    upstream_ids = {u["id"] for u in conf["upstreams"]}
    seen_ids, seen_uris = set(), set()
    for route in routes_of(conf):
        assert errors(DEFINITIONS["route"], route) == [], f"route {route.get('id')}"
        assert route["id"] not in seen_ids, f"duplicate route id {route['id']}"
        seen_ids.add(route["id"])
        for pattern in uris(route):
            key = (pattern, route.get("priority", 0), tuple(route.get("methods") or ()))
            assert key not in seen_uris, f"two routes claim {pattern} with the same priority"
            seen_uris.add(key)
        if "upstream_id" in route:
            assert route["upstream_id"] in upstream_ids, f"route {route['id']}: unknown upstream"


def test_plugins_are_known_enabled_and_valid(conf, config):
    enabled = set(config["plugins"])
    assert enabled <= set(PLUGIN_SCHEMAS), f"no transcribed schema for {enabled - set(PLUGIN_SCHEMAS)}"
    for where, plugins in plugin_holders(conf):
        for name, plugin_conf in plugins.items():
            assert name in PLUGIN_SCHEMAS, f"{where}: unknown plugin {name}"
            # A standalone route naming a plugin outside config.yaml's list fails APISIX's check and is dropped.
            assert name in enabled, f"{where}: {name} is not in config.yaml's plugins"
            assert errors(PLUGIN_SCHEMAS[name], plugin_conf) == [], f"{where}: {name}"
        if "proxy-rewrite" in plugins and "regex_uri" in plugins["proxy-rewrite"]:
            assert len(plugins["proxy-rewrite"]["regex_uri"]) % 2 == 0, f"{where}: regex_uri needs pairs"
    for consumer in conf["consumers"]:
        for name, plugin_conf in consumer["plugins"].items():
            assert name in CONSUMER_PLUGIN_SCHEMAS, f"consumer {consumer['username']}: plugin {name}"
            assert name in enabled
            assert errors(CONSUMER_PLUGIN_SCHEMAS[name], plugin_conf) == [], consumer["username"]


def test_the_schema_files_hold_draft7_schemas():
    schemas = [*DEFINITIONS.values(), *PLUGIN_SCHEMAS.values(), *CONSUMER_PLUGIN_SCHEMAS.values(), CONFIG_SCHEMA]
    for schema in schemas:
        Draft7Validator.check_schema(schema)  # raises SchemaError naming the mistake


def test_the_schemas_reject_mistakes():
    """The transcription bites: typos, wrong types, out-of-range values and unknown fields all fail."""
    plugin, upstream, route = PLUGIN_SCHEMAS, DEFINITIONS["upstream"], DEFINITIONS["route"]
    assert errors(plugin["limit-count"], {"count": 10, "time_window": 60, "key": "remote_addr"}) == []
    assert errors(plugin["limit-count"], {"count": 0, "time_window": 60})
    assert errors(plugin["limit-count"], {"count": 10})
    assert errors(plugin["limit-count"], {"count": 10, "time_window": 60, "rejected_code": 600})
    assert errors(plugin["limit-count"], {"count": 10, "time_window": 60, "keytype": "var"})
    assert errors(plugin["limit-req"], {"rate": 1, "burst": 1})
    assert errors(plugin["key-auth"], {"hide_credential": True})
    assert errors(plugin["cors"], {"allow_origins": "example.com"})
    assert errors(plugin["ip-restriction"], {"whitelist": ["127.0.0.1"], "blacklist": ["10.0.0.1"]})
    assert errors(plugin["ip-restriction"], {"whitelist": ["localhost"]})
    assert errors(plugin["proxy-rewrite"], {})
    assert errors(upstream, {"nodes": {"127.0.0.1:5104": 1}, "timeout": {"connect": 5, "read": 60}})
    assert errors(upstream, {"nodes": {"127.0.0.1:5104": 1}, "checks": {"passive": {}}})
    assert errors(upstream, {"nodes": {"127.0.0.1:5104": 1}, "checks": {"active": {"http_pth": "/health"}}})
    assert errors(upstream, {"nodes": {"127.0.0.1:5104": 1}, "pass_host": "rewrite"})
    assert errors(route, {"id": "x", "name": "x", "uri": "/x", "upstream_id": "u", "hosts": ["a.example"]})


def test_upstream_is_health_checked_with_room_for_slow_answers(conf):
    assert len(conf["upstreams"]) >= 1
    for upstream in conf["upstreams"]:
        assert errors(DEFINITIONS["upstream"], upstream) == [], upstream.get("id")
        assert upstream["scheme"] == "http" and upstream["pass_host"] in ("pass", "node")
        for node in upstream["nodes"]:
            host, _, port = node.rpartition(":")
            assert host and 1 <= int(port) <= 65535, node
        active = upstream["checks"]["active"]
        assert active["http_path"] == "/health" and active.get("type", "http") == "http"
        assert "passive" in upstream["checks"]
        # Gateway 429/502/503/504 describe LMArena, not this node; a passive check counting them would eject
        # every gateway whenever LMArena has a bad minute.
        assert not {429, 502, 503, 504} & set(upstream["checks"]["passive"]["unhealthy"]["http_statuses"])
    gateway = {u["id"]: u for u in conf["upstreams"]}[route_for(conf, "/v1/chat/completions", "POST")["upstream_id"]]
    # Longer than GATEWAY_REQUEST_BUDGET_SECONDS (300 s): a non-streamed answer arrives only at its end.
    assert gateway["timeout"]["read"] > 300
    assert "timeout" not in route_for(conf, "/v1/chat/completions", "POST"), "a route timeout would cut streams"


def test_consumers_take_keys_from_the_environment(conf):
    raw = yaml.safe_load(RAW_ROUTES)  # before substitution
    consumers = raw["consumers"]
    assert {c["username"] for c in consumers} >= {"client", "admin"}
    for consumer in consumers:
        assert errors(DEFINITIONS["consumer"], consumer) == [], consumer.get("username")
        key = consumer["plugins"]["key-auth"]["key"]
        refs = ENV_REF.findall(key)
        assert len(refs) == 1, f"consumer {consumer['username']}: the key must come from one ${{{{VAR}}}}"
        name, default = refs[0]
        assert name in SECRET_VARS and default == "", f"consumer {consumer['username']}: no default key, ever"
        assert ENV_REF.sub("", key) in ("", "Bearer "), f"consumer {consumer['username']}: literal key material"
    names = {c["username"] for c in conf["consumers"]}
    for where, plugins in plugin_holders(conf):
        restriction = plugins.get("consumer-restriction")
        if restriction and restriction.get("type", "consumer_name") == "consumer_name":
            assert set(restriction.get("whitelist", [])) <= names, where


def test_no_secret_literals_anywhere_in_the_front():
    for path in APISIX_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bsk-[A-Za-z0-9]{16,}", text), f"{path.name} holds what looks like a real key"


def test_limit_counts_have_count_window_and_key_and_groups_agree(conf):
    groups: dict[str, dict] = {}
    for where, plugins in plugin_holders(conf):
        limit = plugins.get("limit-count")
        if not limit:
            continue
        assert "count" in limit and "time_window" in limit and limit.get("key"), where
        assert limit.get("rejected_code") == 429, f"{where}: clients retry 429, not APISIX's default 503"
        if "group" in limit:
            # limit-count/init.lua refuses a group whose routes' settings differ ("group conf mismatched").
            assert groups.setdefault(limit["group"], limit) == limit, f"{where}: group {limit['group']} differs"
        limit_req = plugins.get("limit-req")
        if limit_req:
            assert limit_req.get("key") and limit_req.get("rejected_code") == 429, where


@pytest.mark.parametrize("origins", [None, "https://chat.example.com", "https://a.example,http://localhost:3000"])
def test_cors_origins_are_explicit_and_never_wildcard_with_credentials(origins):
    env = dict(TEST_ENV) if origins is None else {**TEST_ENV, "APISIX_CORS_ORIGINS": origins}
    conf = load_routes(env)
    found = 0
    for where, plugins in plugin_holders(conf):
        cors = plugins.get("cors")
        if cors is None:
            continue
        found += 1
        assert errors(PLUGIN_SCHEMAS["cors"], cors) == [], where
        # cors.lua check_schema: with allow_credential no option may be '*' (the first three default to it).
        if cors.get("allow_credential"):
            defaults = {"allow_origins": "*", "allow_methods": "*", "allow_headers": "*"}
            for field in (*defaults, "expose_headers", "timing_allow_origins"):
                assert cors.get(field, defaults.get(field)) != "*", f"{where}: '*' {field} with allow_credential"
        assert cors.get("allow_origins", "*") not in ("*", "**"), f"{where}: origins must be configured"
    assert found


def test_streams_pass_through_unbuffered(conf):
    global_plugins = {name for g in conf.get("global_rules") or [] for name in g.get("plugins") or {}}
    assert not BODY_BUFFERING_PLUGINS & global_plugins
    for path in STREAMING_PATHS:
        route = route_for(conf, path, "POST")
        plugins = route["plugins"]
        assert not BODY_BUFFERING_PLUGINS & set(plugins), f"{path}: {BODY_BUFFERING_PLUGINS & set(plugins)}"
        assert plugins.get("proxy-buffering", {}).get("disable_proxy_buffering") is True, path
        rewrite = plugins.get("proxy-rewrite", {})
        assert "X-Accel-Buffering" not in str(rewrite), "the gateway's X-Accel-Buffering must reach nginx"


def test_substitution_matches_apisix_for_defaults_and_missing_values():
    assert substitute("a ${{X:=b c}} d", {}) == "a b c d"
    assert substitute("${{ X }}", {"X": "v"}) == "v"
    keys = {c["username"]: c["plugins"]["key-auth"]["key"] for c in load_routes()["consumers"]}
    assert keys["client"] == "Bearer " + TEST_ENV["APISIX_CLIENT_KEY"]
