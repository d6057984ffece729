"""Three gateway processes on one store (JSON file or Redis): pool cooldowns and a registration storm are shared."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
import requests

from app.providers.lmarena_bridge import bridge_key
from app.store.breaker_state import FileState, RedisState
from app.store.file_store import last_seen_path
from tests.conftest import ADMIN_KEY, BRIDGE_KEY, CLIENT_KEY
from tests.helpers.gateway_process import GatewayProcess, start_fleet, stop_fleet
from tests.test_pools import A, B, chats
from tests.test_pools_redis import ask

pytestmark = pytest.mark.slow  # three `python -m app` processes per test

PROCESSES = 3
THREADS = 4  # per process
SESSIONS = 5  # per thread
STORES = ["json", "redis"]
# How long a process may go on using its cached copy of a breaker record: the longest of the two stores' caches.
RECORD_CACHE_SECONDS = max(FileState.CACHE_SECONDS, RedisState.CACHE_SECONDS)


@pytest.fixture
def fleet(request, tmp_path, bridge):
    """Return a starter of three gateway processes sharing one store; they are stopped after the test."""
    started: list[GatewayProcess] = []
    storage = tmp_path / "fleet"

    def start(store: str, **extra: str) -> list[GatewayProcess]:
        settings = {
            "LMARENA_BRIDGE_BASE_URL": bridge.url,
            "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
            "LMARENA_BRIDGE_TIMEOUT": "5",
            "GATEWAY_API_KEYS": CLIENT_KEY,
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_THREADS": "8",
            "GATEWAY_SSE_KEEPALIVE_SECONDS": "1",
            "GATEWAY_CONCURRENT_SESSIONS_LIMIT": "1000",
            "STORAGE_PATH": str(storage / "sessions.json"),
            "GATEWAY_ANALYTICS_PATH": str(storage / "analytics.sqlite3"),
            **extra,
        }
        if store == "redis":
            settings.update(SESSION_STORE="redis", REDIS_URL=request.getfixturevalue("redis_db")[0])
            storage.mkdir()  # the generated secrets still live there
        started.extend(start_fleet(PROCESSES, settings, tmp_path / "logs"))
        return started

    yield start
    stop_fleet(started)


def admin_post(gateway: GatewayProcess, path: str, body: dict, http=requests) -> dict:
    response = http.post(gateway.url + path, json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert response.status_code in (200, 201), response.text
    return response.json()["session"]


def shared_record(store: str, storage: Path, redis_client, url: str) -> dict:
    """Return a bridge's breaker record as it is stored for every process (providers.json, or its Redis key)."""
    if store == "json":
        return json.loads((storage / "providers.json").read_text())["providers"][bridge_key(url)]
    return json.loads(redis_client.get("lmgw:provider:" + bridge_key(url)))


@pytest.mark.parametrize("store", STORES)
def test_cooldown_set_by_one_process_is_honoured_by_the_other_two(request, fleet, store, tabs, bridge, tmp_path):
    gateways = fleet(store, GATEWAY_POOL_COOLDOWN_SECONDS="120")
    one, two = tabs
    for name, ids, tab in (("tab-one", A, one), ("tab-two", B, two)):
        body = {"domain": "lmarena.ai", "session_name": name, "session_id": ids[0], "message_id": ids[1]}
        admin_post(gateways[0], "/session/register", {**body, "bridge_base_url": tab.url, "pool": "team"})
    clients = [openai.OpenAI(base_url=g.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20) for g in gateways]
    try:
        # Every process serves the pool first: its member list and both members' breaker records are cached.
        for client in clients:
            assert {ask(client, stream) for stream in (False, True)} == {"from tab one", "from tab two"}
        one.no_browser = True
        asked = len(chats(one))
        for stream in (False, True):
            assert ask(clients[0], stream) == "from tab two"
        assert len(chats(one)) == asked + 1  # the first process paused it after one failure
        redis_client = request.getfixturevalue("redis_db")[1] if store == "redis" else None
        record = shared_record(store, tmp_path / "fleet", redis_client, one.url)
        assert 100 < record["cooldown_until"] - time.time() <= 120
        # The tab is back, but a process that asked it would see that: the others must skip it unasked.
        one.no_browser = False
        time.sleep(RECORD_CACHE_SECONDS + 0.1)
        for client in clients[1:]:
            for stream in (False, True, False, True):
                assert ask(client, stream) == "from tab two"
        assert len(chats(one)) == asked + 1
        assert chats(bridge) == []  # the configured bridge serves no pool request
    finally:
        for client in clients:
            client.close()


def storm(gateway: GatewayProcess, process: int, thread: int, done: dict, errors: list) -> None:
    """Register SESSIONS sessions, heartbeating every one registered so far after each, then all once more."""
    try:
        with requests.Session() as http:
            mine: list[str] = []
            for number in range(SESSIONS):
                name = f"p{process}-t{thread}-s{number}"
                body = {
                    "domain": "lmarena.ai",
                    "session_name": name,
                    "session_id": str(uuid.uuid4()),
                    "message_id": str(uuid.uuid4()),
                    "bridge_base_url": f"http://127.0.0.{process + 2}:{20000 + thread * 100 + number}",
                    "models": {"gpt-5": f"bridge-model-{name}"},
                    "pool": f"pool-{process}",
                }
                if number % 2 == 0:
                    body["bridge_api_key"] = f"sk-lmab-{name}"
                registered = admin_post(gateway, "/session/register", body, http)
                done[name] = {"body": body, "registered": registered, "beats": []}
                mine.append(name)
                for beating in [*mine, *(mine if number == SESSIONS - 1 else [])]:
                    beat = {"domain": "lmarena.ai", "session_name": beating}
                    done[beating]["beats"].append(admin_post(gateway, "/session/heartbeat", beat, http)["last_seen_at"])
    except BaseException as exc:  # noqa: BLE001 - reported by the test's assertion
        errors.append(exc)


@pytest.mark.parametrize("store", STORES)
def test_register_and_heartbeat_storm_over_three_processes_loses_nothing(request, fleet, store, tmp_path, admin):
    gateways = fleet(store)
    done: dict[str, dict] = {}
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=storm, args=(gateway, p, t, done, errors), daemon=True)
        for p, gateway in enumerate(gateways)
        for t in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "the storm did not end within 120 s"
    assert errors == []
    assert len(done) == PROCESSES * THREADS * SESSIONS
    for gateway in gateways:  # every process lists every session, with its fields and its last heartbeat
        listed = requests.get(gateway.url + "/session/list?domain=lmarena.ai", headers=admin, timeout=30).json()
        assert listed["count"] == len(done)
        for shown in listed["data"]:
            sent, registered, beats = (done[shown["session_name"]][k] for k in ("body", "registered", "beats"))
            fields = ("session_id", "message_id", "bridge_base_url", "models", "pool")
            assert {k: shown[k] for k in fields} == {k: sent[k] for k in fields}
            assert shown["bridge_api_key_set"] is ("bridge_api_key" in sent)
            assert shown["created_at"] == registered["created_at"]
            assert beats == sorted(beats) and shown["last_seen_at"] == beats[-1] > registered["last_seen_at"]
            assert shown["active"] is True
    if store == "json":
        path = tmp_path / "fleet" / "sessions.json"
        stored = json.loads(path.read_text())["sessions"]["lmarena.ai"]
        assert set(stored) == set(done)
        # Registrations live in the file; the heartbeats only in the table beside it.
        assert all(stored[name]["last_seen_at"] == done[name]["registered"]["last_seen_at"] for name in done)
        with sqlite3.connect(last_seen_path(str(path))) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    else:
        assert request.getfixturevalue("redis_db")[1].zcard("lmgw:seen:lmarena.ai") == len(done)
