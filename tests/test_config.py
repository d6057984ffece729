"""Settings precedence, validation at start-up, and LMArenaBridge's own files."""

from __future__ import annotations

import json
import logging
import time

import pytest

from app import create_app
from app.config import ConfigError, load_settings
from app.providers import bridge_files
from app.providers.bridge_files import parse_jsonc, strip_jsonc


def test_defaults_are_loopback_and_documented_values(tmp_path):
    settings = load_settings(environ={}, dotenv_path=tmp_path / "absent.env")
    assert settings["LMARENA_BRIDGE_BASE_URL"] == "http://127.0.0.1:5102"
    assert settings["LMARENA_BRIDGE_TIMEOUT"] == 180.0
    assert (settings["GATEWAY_HOST"], settings["GATEWAY_PORT"]) == ("127.0.0.1", 5104)
    assert settings["GATEWAY_API_KEYS"] == ()


def test_precedence_dotenv_then_environment_then_test_config(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("LMARENA_BRIDGE_TIMEOUT=11\nGATEWAY_PORT=6000\nLOG_REQUESTS=yes\n")
    settings = load_settings(
        {"GATEWAY_PORT": 7000}, environ={"LMARENA_BRIDGE_TIMEOUT": "22", "GATEWAY_PORT": "6500"}, dotenv_path=env_file
    )
    assert settings["LMARENA_BRIDGE_TIMEOUT"] == 22.0
    assert settings["GATEWAY_PORT"] == 7000
    assert settings["LOG_REQUESTS"] is True


def test_gateway_env_file_points_at_another_dotenv(tmp_path):
    env_file = tmp_path / "gateway.env"
    env_file.write_text("GATEWAY_API_KEYS=a,b\n")
    settings = load_settings(environ={"GATEWAY_ENV_FILE": str(env_file)})
    assert settings["GATEWAY_API_KEYS"] == ("a", "b")


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("LMARENA_BRIDGE_TIMEOUT", "soon", "number"),
        ("LMARENA_BRIDGE_TIMEOUT", "-1", "positive"),
        ("GATEWAY_PORT", "70000", "port"),
        ("LMARENA_BRIDGE_BASE_URL", "ftp://x", "http"),
        ("YUPP2API_BASE_URL", "http://user:secret@127.0.0.1:8001", "user:password"),
        ("GATEWAY_MODEL_ROUTES", '{"gpt-5": ["openrouter"]}', "providers"),
        ("GATEWAY_MODEL_ALIASES", "gpt-4o", "pairs like"),
        ("GATEWAY_MODEL_ALIASES", "gpt-4o=gpt-5,claude", "got 'claude'"),
        ("GATEWAY_MODEL_ALIASES", "gpt-4o=", "empty"),
        ("GATEWAY_MODEL_ALIASES", "=gpt-5", "empty"),
        ("GATEWAY_MODEL_ALIASES", "gpt-4o=gpt-5,gpt-4o=gemini-2.5-pro", "twice"),
        ("GATEWAY_MODEL_ALIASES", "a=" + "x" * 257, "over-long"),
        ("YUPP2API_MAX_RETRIES", "99", "0 to 10"),
        ("DEBUG_MODE", "maybe", "true or false"),
        ("LMARENA_BRIDGE_MODELS_FILE", "/nonexistent/models.json", "not readable"),
        ("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", "http://127.0.0.1:8080", "host or host:port"),
        ("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", "127.0.0.1:8080/images", "host or host:port"),
        ("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", "127.0.0.1:99999", "host or host:port"),
        ("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", "[::1", "host or host:port"),
        ("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", "user@127.0.0.1", "host or host:port"),
        ("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", "bad host", "host or host:port"),
        ("GATEWAY_IMAGE_FETCH_TIMEOUT", "0", "positive"),
    ],
)
def test_bad_value_fails_naming_the_setting(name, value, words):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={name: value}, dotenv_path=None)
    assert str(caught.value).startswith(f"{name}=")
    assert words in str(caught.value)


def test_model_aliases_are_pairs_trimmed_and_blank_is_none():
    settings = load_settings(environ={"GATEWAY_MODEL_ALIASES": " gpt-4o = gpt-5 ,, pic=nano-banana, "})
    assert settings["GATEWAY_MODEL_ALIASES"] == {"gpt-4o": "gpt-5", "pic": "nano-banana"}
    assert load_settings(environ={"GATEWAY_MODEL_ALIASES": " "})["GATEWAY_MODEL_ALIASES"] == {}
    assert load_settings(environ={})["GATEWAY_MODEL_ALIASES"] == {}


def test_image_fetch_allow_hosts_are_host_and_port_pairs():
    value = " 127.0.0.1:8080 , LOCALHOST. ,::1,[0:0::1]:8443,, 127.0.0.2"
    assert load_settings(environ={"GATEWAY_IMAGE_FETCH_ALLOW_HOSTS": value})["GATEWAY_IMAGE_FETCH_ALLOW_HOSTS"] == {
        ("127.0.0.1", 8080),
        ("localhost", None),  # None: any port
        ("::1", None),
        ("::1", 8443),
        ("127.0.0.2", None),
    }
    assert load_settings(environ={})["GATEWAY_IMAGE_FETCH_ALLOW_HOSTS"] == frozenset()


def test_bad_model_aliases_stop_the_app_at_startup():
    with pytest.raises(ConfigError) as caught:
        create_app({"GATEWAY_ENV_FILE": "", "GATEWAY_MODEL_ALIASES": "gpt-4o:gpt-5"})
    assert str(caught.value).startswith("GATEWAY_MODEL_ALIASES=")


def test_password_in_a_bad_url_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"YUPP2API_BASE_URL": "http://user:s3cret@127.0.0.1:8001"}, dotenv_path=None)
    assert "s3cret" not in str(caught.value) and "user:***@" in str(caught.value)


def test_bad_secret_value_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"GATEWAY_PORT": "x"})
    assert "GATEWAY_PORT" in str(caught.value)
    from app.config import SECRET_SETTINGS

    assert "GATEWAY_ADMIN_KEY" in SECRET_SETTINGS and "LMARENA_BRIDGE_API_KEY" in SECRET_SETTINGS


def test_base_url_with_v1_suffix_is_tolerated():
    settings = load_settings(environ={"LMARENA_BRIDGE_BASE_URL": "http://127.0.0.1:5102/v1/"})
    assert settings["LMARENA_BRIDGE_BASE_URL"] == "http://127.0.0.1:5102"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("LMARENA_BRIDGE_MODELS_FILE", "{not json"),
        ("LMARENA_BRIDGE_MODELS_FILE", '["gpt-5"]'),
        ("LMARENA_BRIDGE_CONFIG_FILE", "{ // unterminated"),
    ],
)
def test_unusable_bridge_file_fails_at_startup(tmp_path, name, content):
    path = tmp_path / "file.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        create_app({"GATEWAY_ENV_FILE": "", name: str(path)})
    assert name in str(caught.value)


MAP_FILE = "/srv/bridge/model_endpoint_map.json"


def _retired_lines(caplog):
    return [r.getMessage() for r in caplog.records if "LMARENA_BRIDGE_MODEL_MAP_FILE" in r.getMessage()]


def test_retired_model_map_setting_in_environment_is_logged_once_at_startup(make_app, monkeypatch, caplog):
    monkeypatch.setenv("LMARENA_BRIDGE_MODEL_MAP_FILE", MAP_FILE)
    with caplog.at_level(logging.WARNING, logger="app.config"):
        app = make_app()
    [line] = _retired_lines(caplog)
    assert "in the environment but ignored" in line and "model_endpoint_map.json" in line
    assert "LMARENA_BRIDGE_MODEL_MAP_FILE" not in app.config


def test_retired_model_map_setting_in_dotenv_is_logged_naming_the_file(tmp_path, caplog):
    env_file = tmp_path / ".env"
    env_file.write_text(f"LMARENA_BRIDGE_MODEL_MAP_FILE={MAP_FILE}\n")
    with caplog.at_level(logging.WARNING, logger="app.config"):
        settings = load_settings(environ={}, dotenv_path=env_file)
    [line] = _retired_lines(caplog)
    assert f"in {env_file} but ignored" in line
    assert "LMARENA_BRIDGE_MODEL_MAP_FILE" not in settings


def test_no_retired_setting_logs_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="app.config"):
        load_settings(environ={}, dotenv_path=tmp_path / "absent.env")
    assert [r for r in caplog.records if r.name == "app.config"] == []


def test_strip_jsonc_keeps_strings_and_drops_comments():
    text = """{
      // a comment with "quotes"
      "url": "http:\\/\\/127.0.0.1:5180/upload", /* block
      comment */ "plain": "http://x//y", "esc": "a\\"//b",
      "list": [1, 2,],
    }"""
    assert parse_jsonc(text) == {
        "url": "http://127.0.0.1:5180/upload",
        "plain": "http://x//y",
        "esc": 'a"//b',
        "list": [1, 2],
    }
    assert strip_jsonc('"//"') == '"//"'


def test_bridge_config_api_key_is_used_when_no_key_configured(make_app, tmp_path, auth):
    config = tmp_path / "config.jsonc"
    config.write_text('{\n  // the bridge\'s own key\n  "api_key": "sk-lmab-test",\n  "session_id": "x"\n}\n')
    client = make_app(LMARENA_BRIDGE_API_KEY="", LMARENA_BRIDGE_CONFIG_FILE=str(config)).test_client()
    response = client.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}, headers=auth
    )
    assert response.status_code == 200


def test_models_file_is_reloaded_when_edited(make_app, tmp_path, auth, monkeypatch, bridge):
    monkeypatch.setattr(bridge_files, "STAT_INTERVAL", 0.0)
    bridge.models_status = 404  # only the file speaks
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"first": "id-1"}))
    client = make_app(LMARENA_BRIDGE_MODELS_FILE=str(path), GATEWAY_MODELS_CACHE_SECONDS=0.001).test_client()
    assert [m["id"] for m in client.get("/v1/models", headers=auth).get_json()["data"]] == ["first"]
    time.sleep(0.01)
    path.write_text(json.dumps({"first": "id-1", "second": "id-2"}))
    assert [m["id"] for m in client.get("/v1/models", headers=auth).get_json()["data"]] == ["first", "second"]
    path.write_text("{broken")  # a bad edit keeps the last good list
    assert [m["id"] for m in client.get("/v1/models", headers=auth).get_json()["data"]] == ["first", "second"]


def test_env_example_documents_every_setting_and_loads_as_is():
    from app.config import ROOT, SETTINGS

    example = ROOT / ".env.example"
    text = example.read_text()
    missing = [s.name for s in SETTINGS if f"\n{s.name}=" not in text and f"# {s.name}=" not in text]
    assert missing == []
    settings = load_settings(environ={}, dotenv_path=example)
    assert settings["LMARENA_BRIDGE_BASE_URL"] == "http://127.0.0.1:5102"
    assert settings["GATEWAY_MODEL_ROUTES"] == {}
