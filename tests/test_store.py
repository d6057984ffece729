"""The session store contract, run against the JSON file store and a real redis-server."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from app.errors import SessionLimitReached, StoreError
from app.ratelimit import RedisCells
from app.store.base import KEEPABLE, Session, isoformat, parse_time, utcnow
from app.store.breaker_state import RedisState
from app.store.file_store import JsonSessionStore
from app.store.inflight_leases import RedisSlots
from app.store.redis_store import RedisSessionStore

HOUR = timedelta(hours=1)


@pytest.fixture(params=["json", "redis"])
def store(request, tmp_path):
    if request.param == "json":
        yield JsonSessionStore(str(tmp_path / "sessions.json"))
        return
    server = request.getfixturevalue("redis_server")
    store = RedisSessionStore(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield store
    store.close()


def make(name="s1", domain="lmarena.ai", **fields) -> Session:
    return Session(domain, name, str(uuid.uuid4()), str(uuid.uuid4()), **fields)


def reg(store, session, now=None, limit=10):
    now = now or utcnow()
    return store.register(session, now=now, limit=limit, active_since=now - timedelta(minutes=5))


def test_register_creates_then_updates(store):
    first = make(models={"gpt-5": "983bc566-b783-4d28-b24c-3c8b08eb1086"})
    t0 = utcnow() - HOUR
    stored, created = reg(store, first, now=t0)
    assert created is True
    assert stored.created_at == stored.updated_at == stored.last_seen_at == isoformat(t0)
    again = make(bridge_base_url="http://127.0.0.1:5999")
    stored, created = reg(store, again)
    assert created is False
    assert stored.created_at == isoformat(t0)
    assert parse_time(stored.updated_at) > t0
    got = store.get("lmarena.ai", "s1")
    assert (got.session_id, got.message_id) == (again.session_id, again.message_id)
    assert got.bridge_base_url == "http://127.0.0.1:5999"
    assert got.models == {}


def test_same_name_on_two_domains_never_mixes(store):
    a, b = make("team", "lmarena.ai"), make("team", "canary.lmarena.ai")
    reg(store, a)
    reg(store, b)
    assert store.get("lmarena.ai", "team").session_id == a.session_id
    assert store.get("canary.lmarena.ai", "team").session_id == b.session_id
    assert store.delete("canary.lmarena.ai", "team") is True
    assert store.get("lmarena.ai", "team") is not None
    assert store.get("canary.lmarena.ai", "team") is None


def test_list_orders_by_domain_then_name(store):
    for domain, name in [("lmarena.ai", "b"), ("canary.lmarena.ai", "z"), ("lmarena.ai", "a")]:
        reg(store, make(name, domain))
    assert [(s.domain, s.session_name) for s in store.list()] == [
        ("canary.lmarena.ai", "z"),
        ("lmarena.ai", "a"),
        ("lmarena.ai", "b"),
    ]
    assert [s.session_name for s in store.list("lmarena.ai")] == ["a", "b"]
    assert store.list("beta.lmarena.ai") == []


def test_heartbeat_moves_last_seen_only(store):
    t0 = utcnow() - HOUR
    reg(store, make(), now=t0)
    later = utcnow()
    seen = store.heartbeat("lmarena.ai", "s1", now=later)
    assert seen.last_seen_at == isoformat(later)
    assert seen.updated_at == isoformat(t0)
    assert store.heartbeat("lmarena.ai", "nobody", now=later) is None


def test_delete_missing_is_false(store):
    assert store.delete("lmarena.ai", "nobody") is False


def test_limit_counts_only_active_sessions(store):
    now = utcnow()
    for i in range(3):
        reg(store, make(f"active-{i}"), now=now, limit=3)
    reg(store, make("stale"), now=now - HOUR, limit=100)
    with pytest.raises(SessionLimitReached) as caught:
        reg(store, make("one-too-many"), now=now, limit=3)
    assert caught.value.status_code == 429
    assert "lmarena.ai" in caught.value.message
    reg(store, make("active-1"), now=now, limit=3)  # an active session may always update itself
    with pytest.raises(SessionLimitReached):
        reg(store, make("stale"), now=now, limit=3)  # a stale one coming back counts as new
    reg(store, make("other-domain", "beta.lmarena.ai"), now=now, limit=3)
    assert store.get("lmarena.ai", "one-too-many") is None


def test_cleanup_by_age_with_dry_run(store):
    now = utcnow()
    reg(store, make("old"), now=now - timedelta(days=40))
    reg(store, make("recent"), now=now - timedelta(days=2))
    cutoff = now - timedelta(days=30)
    listed = store.cleanup(older_than=cutoff, dry_run=True)
    assert [s.session_name for s in listed] == ["old"]
    assert store.get("lmarena.ai", "old") is not None
    removed = store.cleanup(older_than=cutoff)
    assert [s.session_name for s in removed] == ["old"]
    assert store.get("lmarena.ai", "old") is None
    assert store.get("lmarena.ai", "recent") is not None


def test_redis_down_is_a_store_error(tmp_path):
    with pytest.raises(StoreError):
        RedisSessionStore("redis://127.0.0.1:9/0", timeout=0.5)


def test_reregistration_can_keep_admin_set_fields(store):
    reg(store, make(bridge_base_url="http://127.0.0.1:5202", models={"gpt-5": "983bc566"}))
    update = make()
    now = utcnow()
    stored, created = store.register(
        update,
        now=now,
        limit=10,
        active_since=now - timedelta(minutes=5),
        keep=frozenset({"bridge_base_url", "models"}),
    )
    assert created is False
    got = store.get("lmarena.ai", "s1")
    assert got.session_id == update.session_id
    assert (got.bridge_base_url, got.models) == ("http://127.0.0.1:5202", {"gpt-5": "983bc566"})
    assert (stored.bridge_base_url, stored.models) == (got.bridge_base_url, got.models)


def test_pool_is_stored_kept_on_reregistration_and_absent_from_old_records(store):
    reg(store, make(pool="team"))
    assert store.get("lmarena.ai", "s1").pool == "team"
    now = utcnow()
    store.register(make(), now=now, limit=10, active_since=now - timedelta(minutes=5), keep=KEEPABLE)
    assert store.get("lmarena.ai", "s1").pool == "team"
    reg(store, make(pool=None))
    assert store.get("lmarena.ai", "s1").pool is None
    old = {"session_id": "a", "message_id": "b", "models": {}, "created_at": "", "updated_at": "", "last_seen_at": ""}
    assert Session.from_record("lmarena.ai", "old", old).pool is None


def test_redis_users_open_clients_through_one_factory(redis_server):
    clients = [
        RedisSessionStore(redis_server.url, timeout=30).client,
        RedisState(redis_server.url, timeout=30).client,
        RedisCells(redis_server.url, timeout=30).client,
        RedisSlots(redis_server.url, timeout=30).client,
    ]
    wanted = {"socket_connect_timeout": 2.0, "socket_timeout": 30, "decode_responses": True}
    for client in clients:
        options = client.connection_pool.connection_kwargs
        assert {name: options[name] for name in wanted} == wanted
        client.close()


def _reregister(store, name="s1", **given):
    """Register again as /session/register does: the fields not given keep their stored value."""
    now = utcnow()
    keep = KEEPABLE - given.keys()
    return store.register(make(name, **given), now=now, limit=10, active_since=now - timedelta(minutes=5), keep=keep)[0]


def test_bridge_key_is_kept_only_while_its_bridge_stays(store):
    reg(store, make(bridge_base_url="http://127.0.0.1:5202", bridge_api_key="sk-own-bridge"))
    assert _reregister(store).bridge_api_key == "sk-own-bridge"  # a userscript's update leaves it
    assert store.get("lmarena.ai", "s1").bridge_api_key == "sk-own-bridge"
    # Moved to another bridge without a key of its own: the old bridge's key is not sent there.
    assert _reregister(store, bridge_base_url="http://127.0.0.1:5203").bridge_api_key is None
    assert store.get("lmarena.ai", "s1").bridge_api_key is None
    # Given without the URL: the key goes with the stored URL.
    keyed = _reregister(store, bridge_api_key="sk-new")
    assert (keyed.bridge_base_url, keyed.bridge_api_key) == ("http://127.0.0.1:5203", "sk-new")
    assert "sk-new" not in repr(keyed) and keyed.to_dict()["bridge_api_key_set"] is True
    assert "bridge_api_key" not in keyed.to_dict()
    assert _reregister(store, bridge_api_key=None).bridge_api_key is None  # given as null or "": removed


def test_sessions_stored_before_bridge_keys_load(store, tmp_path):
    reg(store, make("old", bridge_base_url="http://127.0.0.1:5202"))
    if isinstance(store, JsonSessionStore):
        raw = json.loads(Path(store.path).read_text())
        del raw["sessions"]["lmarena.ai"]["old"]["bridge_api_key"]
        Path(store.path).write_text(json.dumps(raw))
    else:
        key = store._keys("lmarena.ai", "old")[0]
        record = json.loads(store.client.hget(key, "record"))
        del record["bridge_api_key"]
        store.client.hset(key, "record", json.dumps(record))
    old = store.get("lmarena.ai", "old")
    assert (old.bridge_base_url, old.bridge_api_key) == ("http://127.0.0.1:5202", None)
    assert [s.to_dict()["bridge_api_key_set"] for s in store.list()] == [False]
    assert _reregister(store, "old").bridge_api_key is None


def test_ids_source_is_stored_replaced_on_reregistration_and_absent_from_old_records(store):
    reg(store, make(ids_source="bridge_job"))
    assert store.get("lmarena.ai", "s1").ids_source == "bridge_job"
    assert [s.to_dict()["ids_source"] for s in store.list()] == ["bridge_job"]
    # Not kept like the admin's fields: it belongs to the ids it came with.
    assert _reregister(store, ids_source="retry").ids_source == "retry"
    assert _reregister(store).ids_source is None
    reg(store, make("old", ids_source="retry"))
    if isinstance(store, JsonSessionStore):
        raw = json.loads(Path(store.path).read_text())
        del raw["sessions"]["lmarena.ai"]["old"]["ids_source"]
        Path(store.path).write_text(json.dumps(raw))
    else:
        key = store._keys("lmarena.ai", "old")[0]
        record = json.loads(store.client.hget(key, "record"))
        del record["ids_source"]
        store.client.hset(key, "record", json.dumps(record))
    assert store.get("lmarena.ai", "old").ids_source is None
    assert store.get("lmarena.ai", "old").to_dict()["ids_source"] is None
    assert _reregister(store, "old", ids_source="bridge_job").ids_source == "bridge_job"
