"""What a pool accepts: /v1/models lists it, chat and images send each member the model as its own map says."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.test_pools import POOL, ROUTED_KEY, A, B, chats, register
from tests.upstreams.fake_bridge import DEFAULT_MODELS, FakeBridge

C = ("55555555-5555-4555-8555-555555555555", "66666666-6666-4666-8666-666666666666")
GPT5_ID = DEFAULT_MODELS["gpt-5"]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def tabs():
    """Three bridges: two whose sessions carry models maps, one that lists only gpt-5 and nano-banana."""
    with (
        FakeBridge(chunk_delay=0.01, reply="from tab one") as one,
        FakeBridge(chunk_delay=0.01, reply="from tab two") as two,
        FakeBridge(
            chunk_delay=0.01, reply="from tab three", models={"gpt-5": GPT5_ID, "nano-banana": "null:image"}
        ) as three,
    ):
        for fake in (one, two, three):
            fake.image_url = fake.url + "/img/{:04d}.png"
        yield one, two, three


@pytest.fixture
def mapped(serve, openai_for, admin, tabs):
    """The official client of a gateway with pool "team": one's map, two's map, three without one."""
    server = serve(GATEWAY_MODEL_ALIASES="smart=gpt-5,vision=gemini-2.5-pro")
    client = server.app.test_client()
    one, two, three = tabs
    register(client, admin, "tab-one", A, one.url, models={"my-gpt": "gpt-5", "my-id": GPT5_ID, "pic": "nano-banana"})
    register(client, admin, "tab-two", B, two.url, models={"my-gpt": "claude-opus-4-1-20250805", "my-id": "gpt-5"})
    register(client, admin, "tab-three", C, three.url)
    return openai_for(server)


def sent(fake) -> list[dict]:
    return [r.json for r in chats(fake)]


def listed(gateway, headers) -> list[str]:
    return sorted(m.id for m in gateway.models.list(extra_headers=headers))


def test_pool_models_are_the_union_of_what_its_members_accept(mapped):
    # one's and two's maps, three's own list, and the aliases whose target three lists (vision's does not).
    assert listed(mapped, POOL) == ["gpt-5", "my-gpt", "my-id", "nano-banana", "pic", "smart"]
    assert mapped.models.retrieve("pic", extra_headers=POOL).owned_by == "lmarena_bridge"
    with pytest.raises(openai.NotFoundError):
        mapped.models.retrieve("gemini-2.5-pro", extra_headers=POOL)


def test_a_mapped_name_goes_only_to_members_whose_map_holds_it_rewritten_per_member(mapped, tabs):
    one, two, three = tabs
    answers = {mapped.chat.completions.create(model="my-gpt", messages=HI, extra_headers=POOL).model for _ in range(4)}
    assert answers == {"my-gpt"}
    assert [b["model"] for b in sent(one)] == ["gpt-5"] * 2 and {b["session_id"] for b in sent(one)} == {A[0]}
    assert [b["model"] for b in sent(two)] == ["claude-opus-4-1-20250805"] * 2
    assert {b["session_id"] for b in sent(two)} == {B[0]} and sent(three) == []


def test_a_name_no_map_holds_goes_to_the_member_whose_bridge_lists_it(mapped, tabs):
    one, two, three = tabs
    for model in ("gpt-5", "smart"):
        reply = mapped.chat.completions.create(model=model, messages=HI, extra_headers=POOL)
        assert reply.model == model and reply.choices[0].message.content == "from tab three"
    assert [(b["model"], b["session_id"]) for b in sent(three)] == [("gpt-5", C[0])] * 2
    assert sent(one) == sent(two) == []


def test_a_name_no_member_accepts_is_404_and_reaches_no_bridge(mapped, tabs):
    for model in ("gemini-2.5-pro", "vision", "no-such-model"):
        with pytest.raises(openai.NotFoundError) as caught:
            mapped.chat.completions.create(model=model, messages=HI, extra_headers=POOL)
        assert caught.value.body["code"] == "model_not_found" and "pool 'team'" in caught.value.body["message"]
    assert all(chats(fake) == [] for fake in tabs)


@pytest.mark.parametrize("stream", [False, True])
def test_the_next_member_gets_its_own_model_and_fields_not_the_failed_ones(mapped, tabs, stream):
    one, two, _ = tabs
    one.no_browser = two.no_browser = True  # whichever turn comes first fails; the other is tried next
    with pytest.raises(openai.RateLimitError) as caught:  # the status comes before any frame, streamed or not
        mapped.chat.completions.create(model="my-id", messages=HI, extra_headers=POOL, stream=stream)
    assert caught.value.body["code"] == "pool_exhausted"
    by_bridge = {fake.url: sent(fake)[0] for fake in (one, two)}
    # one's map holds an LMArena id: the name stays, the id goes as target_model_id; two's a bridge name, no id.
    assert by_bridge[one.url]["model"] == "my-id" and by_bridge[one.url]["target_model_id"] == GPT5_ID
    assert by_bridge[two.url]["model"] == "gpt-5" and "target_model_id" not in by_bridge[two.url]
    assert by_bridge[two.url]["session_id"] == B[0]


def test_images_in_a_pool_go_to_members_that_accept_the_model(mapped, tabs):
    one, two, three = tabs
    for _ in range(2):
        result = mapped.images.generate(model="pic", prompt="a cat", extra_headers=POOL)
        assert result.data[0].url.startswith(one.url)
    assert [b["model"] for b in sent(one)] == ["nano-banana"] * 2 and sent(two) == sent(three) == []
    # Without a map, three takes the names its bridge lists.
    assert (
        mapped.images.generate(model="nano-banana", prompt="a cat", extra_headers=POOL)
        .data[0]
        .url.startswith(three.url)
    )
    with pytest.raises(openai.NotFoundError) as caught:
        mapped.images.generate(model="gemini-2.5-pro", prompt="a cat", extra_headers=POOL)
    assert caught.value.body["code"] == "model_not_found"


def test_images_in_a_pool_leave_out_members_that_map_the_name_to_a_text_model(make_app, admin, auth, tabs, tmp_path):
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"gpt-5": GPT5_ID, "nano-banana": "null:image"}))
    client = make_app(LMARENA_BRIDGE_MODELS_FILE=str(models)).test_client()
    one, two, _ = tabs
    register(client, admin, "tab-one", A, one.url, models={"pic": "nano-banana", "txt": "gpt-5"})
    register(client, admin, "tab-two", B, two.url, models={"pic": "gpt-5", "txt": "gpt-5"})
    for _ in range(2):
        response = client.post("/v1/images/generations", json={"model": "pic", "prompt": "a cat"}, headers=auth | POOL)
        assert response.status_code == 200 and response.get_json()["data"][0]["url"].startswith(one.url)
    response = client.post("/v1/images/generations", json={"model": "txt", "prompt": "a cat"}, headers=auth | POOL)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "model_not_image"
    assert sent(two) == [] and len(sent(one)) == 2


def test_a_key_routed_to_a_pool_lists_and_uses_what_the_pool_accepts(serve, openai_for, admin, tabs):
    server = serve(GATEWAY_API_KEYS=f"{CLIENT_KEY},{ROUTED_KEY}", GATEWAY_KEY_ROUTES=f"{ROUTED_KEY}=lmarena.ai/team")
    one, _, three = tabs
    register(server.app.test_client(), admin, "tab-one", A, one.url, models={"pic": "nano-banana"})
    routed, plain = openai_for(server, ROUTED_KEY), openai_for(server)
    assert listed(routed, {}) == ["pic"]
    assert "pic" not in listed(plain, {}) and "gpt-5" in listed(plain, {})  # the default bridge's list
    assert routed.images.generate(model="pic", prompt="a cat").data[0].url.startswith(one.url)
    with pytest.raises(openai.NotFoundError):
        routed.chat.completions.create(model="gpt-5", messages=HI)
    assert sent(three) == []
