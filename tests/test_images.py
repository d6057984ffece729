"""Images through the bridge's chat endpoint, with the official OpenAI client."""

from __future__ import annotations

import base64
import json

import openai
import pytest

from tests.upstreams.httpserver import FakeUpstream, UpstreamHandler

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)


class ImageHost(FakeUpstream):
    """Serves one PNG, standing in for lmarena's image CDN."""

    def handle(self, h: UpstreamHandler) -> None:
        h.send_body(200, PNG, "image/png")


def test_images_returns_urls_from_markdown(openai_client, bridge):
    result = openai_client.images.generate(model="nano-banana", prompt="a cat")
    assert [d.url for d in result.data] == ["https://fake-lmarena.invalid/generated/fake-image-0001.png"]
    assert result.created > 0
    sent = bridge.requests[-1].json
    assert sent["model"] == "nano-banana"
    assert sent["stream"] is False
    assert sent["messages"] == [{"role": "user", "content": "a cat"}]


def test_images_n_makes_one_bridge_call_per_image(openai_client, bridge):
    result = openai_client.images.generate(model="nano-banana", prompt="two cats", n=2)
    assert [d.url.rsplit("/", 1)[1] for d in result.data] == ["fake-image-0001.png", "fake-image-0002.png"]
    assert len([r for r in bridge.requests if r.path == "/v1/chat/completions"]) == 2


def test_images_default_model_is_first_image_model_in_models_file(make_app, bridge, tmp_path, auth):
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086", "nano-banana": "null:image"}))
    client = make_app(LMARENA_BRIDGE_MODELS_FILE=str(models)).test_client()
    response = client.post("/v1/images/generations", json={"prompt": "a cat"}, headers=auth)
    assert response.status_code == 200
    assert bridge.requests[-1].json["model"] == "nano-banana"


def test_images_text_model_is_rejected_before_upstream(make_app, bridge, tmp_path, auth):
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086", "nano-banana": "null:image"}))
    client = make_app(LMARENA_BRIDGE_MODELS_FILE=str(models)).test_client()
    response = client.post("/v1/images/generations", json={"prompt": "a cat", "model": "gpt-5"}, headers=auth)
    assert response.status_code == 400
    assert "nano-banana" in response.get_json()["error"]["message"]
    assert bridge.requests == []


def test_images_without_model_and_no_image_models_is_400(client, auth, bridge):
    response = client.post("/v1/images/generations", json={"prompt": "a cat"}, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "model"


def test_images_answer_without_image_is_502(openai_client):
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.images.generate(model="gpt-5", prompt="no picture here")
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "no_image_returned"


def test_images_bridge_error_is_translated(openai_client, bridge):
    bridge.no_browser = True
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client.images.generate(model="nano-banana", prompt="a cat")
    assert caught.value.status_code == 503


def test_images_b64_json_downloads_the_image(serve, openai_for, bridge):
    with ImageHost() as host:
        # A loopback http:// image host must be allow-listed (tests/test_image_fetch.py: what is refused, and why).
        client = openai_for(serve(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=host.url.removeprefix("http://")))
        bridge.image_url = host.url + "/img/{:04d}.png"
        result = client.images.generate(model="nano-banana", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == PNG
