"""GET /v1/models from the bridge's /v1/models and its models.json."""

from __future__ import annotations

import json
import os

import openai
import pytest


def _models_file(tmp_path, mapping):
    path = tmp_path / "models.json"
    path.write_text(json.dumps(mapping), encoding="utf-8")
    return path


def test_models_lists_bridge_models_with_owner(openai_client):
    models = {m.id: m for m in openai_client.models.list()}
    assert set(models) == {"gemini-2.5-pro", "gpt-5", "claude-opus-4-1-20250805", "nano-banana"}
    assert all(m.owned_by == "lmarena_bridge" and m.object == "model" for m in models.values())


def test_models_merges_models_file_and_bridge_without_duplicates(make_app, tmp_path, auth):
    path = _models_file(tmp_path, {"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086", "local-only": "abc:image"})
    os.utime(path, (1_700_000_000, 1_700_000_000))
    data = make_app(LMARENA_BRIDGE_MODELS_FILE=str(path)).test_client().get("/v1/models", headers=auth).get_json()
    ids = [m["id"] for m in data["data"]]
    assert data["object"] == "list"
    assert ids.count("gpt-5") == 1
    assert ids[:2] == ["gpt-5", "local-only"]
    assert {"gemini-2.5-pro", "nano-banana"} <= set(ids)
    assert data["data"][1]["created"] == 1_700_000_000


def test_models_served_from_file_when_bridge_is_down(make_app, tmp_path, auth):
    path = _models_file(tmp_path, {"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086"})
    app = make_app(LMARENA_BRIDGE_MODELS_FILE=str(path), LMARENA_BRIDGE_BASE_URL="http://127.0.0.1:9")
    response = app.test_client().get("/v1/models", headers=auth)
    assert response.status_code == 200
    assert [m["id"] for m in response.get_json()["data"]] == ["gpt-5"]


def test_models_without_file_and_bridge_down_is_502(serve, openai_for):
    with pytest.raises(openai.APIStatusError) as caught:
        openai_for(serve(LMARENA_BRIDGE_BASE_URL="http://127.0.0.1:9")).models.list()
    assert caught.value.status_code == 502
    assert "LMARENA_BRIDGE_MODELS_FILE" in caught.value.message


def test_models_bridge_list_is_cached(client, auth, bridge):
    for _ in range(5):
        assert client.get("/v1/models", headers=auth).status_code == 200
    assert len([r for r in bridge.requests if r.path == "/v1/models"]) == 1


def test_models_empty_bridge_list_is_empty_not_error(client, auth, bridge):
    bridge.models_status = 404
    response = client.get("/v1/models", headers=auth)
    assert response.status_code == 200
    assert response.get_json()["data"] == []


def test_models_retrieve_one_and_unknown(openai_client):
    assert openai_client.models.retrieve("gpt-5").id == "gpt-5"
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"
