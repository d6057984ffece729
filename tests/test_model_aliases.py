"""GATEWAY_MODEL_ALIASES: a client's model name sent upstream as another, routed by it, reported as asked."""

from __future__ import annotations

import openai
import pytest

HI = [{"role": "user", "content": "hi"}]


def _chats(upstream):
    return [r.json for r in upstream.requests if r.path == "/v1/chat/completions"]


@pytest.fixture
def aliased(serve, openai_for):
    """The official client of a gateway whose aliases send gpt-4o as gpt-5 and pic as nano-banana."""
    return openai_for(serve(GATEWAY_MODEL_ALIASES="gpt-4o=gpt-5, pic = nano-banana"))


def test_alias_sends_bridge_name_and_answers_with_client_name(aliased, bridge):
    reply = aliased.chat.completions.create(model="gpt-4o", messages=HI)
    assert reply.model == "gpt-4o"
    assert _chats(bridge)[-1]["model"] == "gpt-5"
    chunks = list(aliased.chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    assert len(chunks) > 3 and {c.model for c in chunks} == {"gpt-4o"}
    assert _chats(bridge)[-1]["model"] == "gpt-5" and "target_model_id" not in _chats(bridge)[-1]


def test_unaliased_names_pass_unchanged(aliased, bridge):
    assert aliased.chat.completions.create(model="gpt-5", messages=HI).model == "gpt-5"
    assert _chats(bridge)[-1]["model"] == "gpt-5"


def test_alias_routes_by_the_name_sent_upstream(serve, openai_for, with_yupp, bridge, yupp):
    # gpt-4o is listed by no provider: only the alias's target decides where the request goes.
    gateway = openai_for(serve(**with_yupp, GATEWAY_MODEL_ALIASES="gpt-4o=GPT-4o-mini,smart=gpt-5"))
    assert gateway.chat.completions.create(model="gpt-4o", messages=HI).model == "gpt-4o"
    assert _chats(yupp)[-1]["model"] == "GPT-4o-mini" and _chats(bridge) == []
    assert gateway.chat.completions.create(model="smart", messages=HI).model == "smart"
    assert _chats(bridge)[-1]["model"] == "gpt-5" and len(_chats(yupp)) == 1


def test_alias_to_a_model_nobody_serves_is_404(serve, openai_for, bridge):
    gateway = openai_for(serve(GATEWAY_MODEL_ALIASES="gpt-4o=no-such-model"))
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.chat.completions.create(model="gpt-4o", messages=HI)
    assert caught.value.body["code"] == "model_not_found"
    assert _chats(bridge) == []


def test_images_alias(aliased, bridge):
    result = aliased.images.generate(model="pic", prompt="a cat")
    assert result.data[0].url.endswith("fake-image-0001.png")
    assert _chats(bridge)[-1]["model"] == "nano-banana"


def test_images_alias_to_a_text_model_is_400(serve, openai_for, bridge, tmp_path):
    models = tmp_path / "models.json"
    models.write_text('{"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086", "nano-banana": "null:image"}')
    gateway = openai_for(serve(GATEWAY_MODEL_ALIASES="pic=gpt-5", LMARENA_BRIDGE_MODELS_FILE=str(models)))
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.images.generate(model="pic", prompt="a cat")
    assert caught.value.body["code"] == "model_not_image"
    assert _chats(bridge) == []


def test_models_lists_aliases_whose_target_is_served(serve, openai_for, with_yupp, yupp):
    gateway = openai_for(serve(**with_yupp, GATEWAY_MODEL_ALIASES="gpt-4o=GPT-4o-mini,smart=gpt-5,gone=no-such-model"))
    models = {m.id: m for m in gateway.models.list()}
    assert models["gpt-4o"].owned_by == "yupp2api" and models["smart"].owned_by == "lmarena_bridge"
    assert models["smart"].created == models["gpt-5"].created
    assert "gone" not in models  # chat would answer it 404: the list does not offer it
    assert gateway.models.retrieve("smart").id == "smart"
    bridge_only = {m.id for m in gateway.models.list(extra_headers={"X-Provider": "bridge_direct"})}
    assert "smart" in bridge_only and "gpt-4o" not in bridge_only


def test_a_served_name_aliased_to_an_unserved_one_is_not_listed(serve, openai_for, bridge):
    gateway = openai_for(serve(GATEWAY_MODEL_ALIASES="gpt-5=no-such-model"))
    assert "gpt-5" not in {m.id for m in gateway.models.list()}
    with pytest.raises(openai.NotFoundError):
        gateway.chat.completions.create(model="gpt-5", messages=HI)
