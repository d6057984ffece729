"""Fixtures: a real fake LMArenaBridge on loopback, the app, and the app served by waitress on loopback."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import openai
import pytest
import redis
from waitress.server import create_server

from app import create_app
from app.config import SETTINGS
from tests.helpers.redis_server import RedisServer
from tests.upstreams.fake_bridge import FakeBridge
from tests.upstreams.fake_yupp import FakeYupp

TESTS = Path(__file__).resolve().parent
# Every test under these folders gets the folder's marker, so a new test there is left out of `make test-fast` too.
MARKED_FOLDERS = {"browser": pytest.mark.browser, "deploy": pytest.mark.deploy}
CLIENT_KEY = "sk-gw-test"
BRIDGE_KEY = "sk-lmab-test"
YUPP_KEY = "sk-yupp-test"
ADMIN_KEY = "sk-admin-test"


def pytest_collection_modifyitems(items) -> None:
    """Mark tests by folder (browser, deploy), so a new test there is left out of `make test-fast` too."""
    for item in items:
        path = item.path.resolve()
        if not path.is_relative_to(TESTS):
            continue
        top = path.relative_to(TESTS).parts[0]  # a folder, or a module directly in tests/
        if top in MARKED_FOLDERS:
            item.add_marker(MARKED_FOLDERS[top])


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    """Keep the developer's shell settings out of the tests, and every test's data out of the repo's storage/."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.delenv("GATEWAY_ENV_FILE", raising=False)
    monkeypatch.setenv("STORAGE_PATH", str(tmp_path / "default-storage" / "sessions.json"))
    monkeypatch.setenv("GATEWAY_ANALYTICS_PATH", str(tmp_path / "default-storage" / "analytics.sqlite3"))


@pytest.fixture
def bridge():
    """Start a fake LMArenaBridge that streams quickly."""
    fake = FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.02, response_delay=0.01, hang_seconds=0.3)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def yupp():
    """Start a fake yupp2Api that streams quickly."""
    fake = FakeYupp(api_key=YUPP_KEY, chunk_delay=0.02, response_delay=0.01, hang_seconds=0.3)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def tabs():
    """Two healthy fake bridges, as two browser tabs would run (the members of a pool)."""
    with (
        FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.01, reply="from tab one") as one,
        FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.01, reply="from tab two") as two,
    ):
        yield one, two


@pytest.fixture
def with_yupp(yupp):
    """Settings that enable the fake yupp2Api beside the fake bridge."""
    return {
        "YUPP2API_ENABLED": True,
        "YUPP2API_BASE_URL": yupp.url,
        "YUPP2API_API_KEY": YUPP_KEY,
        "YUPP2API_TIMEOUT": 5,
    }


def app_settings(bridge_url: str, storage: Path, **overrides) -> dict:
    """Return the settings every test app starts from: the fake bridge, keys, quick retries, data under storage."""
    return {
        "TESTING": True,
        "GATEWAY_ENV_FILE": "",
        "LMARENA_BRIDGE_BASE_URL": bridge_url,
        "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
        "LMARENA_BRIDGE_TIMEOUT": 5,
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_SSE_KEEPALIVE_SECONDS": 1,
        "GATEWAY_HEALTH_CACHE_SECONDS": 5,
        "STORAGE_PATH": str(storage / "sessions.json"),
        "GATEWAY_ANALYTICS_PATH": str(storage / "analytics.sqlite3"),
        # Quick retries; Retry-After beyond 1 s means "try elsewhere" instead of a slow test.
        "GATEWAY_RETRY_BASE_DELAY": 0.01,
        "GATEWAY_RETRY_MAX_DELAY": 0.05,
        "GATEWAY_RETRY_AFTER_CAP": 1,
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        **overrides,
    }


def close_app(app) -> None:
    """Close what an app holds open: pooled upstream connections, the analytics writer, the limits' shared state."""
    app.extensions["router"].close()
    for service in ("analytics", "ratelimit", "event_limit", "inflight"):
        if app.extensions.get(service) is not None:
            app.extensions[service].close()


@pytest.fixture
def make_app(bridge, tmp_path):
    """Return a factory of apps wired to the fake bridge; keyword arguments override settings."""
    apps = []

    def factory(**overrides):
        apps.append(create_app(app_settings(bridge.url, tmp_path / "storage", **overrides)))
        return apps[-1]

    yield factory
    for app in apps:
        close_app(app)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth():
    """Headers carrying the test client key."""
    return {"Authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture
def admin():
    """Headers carrying the test admin key."""
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


class LiveServer:
    """An app served by waitress on a free loopback port, as `python -m app` serves it."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = create_server(app, host="127.0.0.1", port=0, threads=8, ident="test-gateway")
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return  # already stopped (a test may stop a server its fixture stops again)

        def close_all() -> None:
            # The listener, kept-alive connections and the trigger itself: with none left the loop ends.
            for channel in list(self.server._map.values()):
                channel.handle_close()

        # Channels belong to waitress's loop thread; closing them from here races its poll() (EBADF).
        try:
            self.server.trigger.pull_trigger(close_all)
        except OSError:
            # pull_trigger queues the thunk, then writes to the trigger's pipe; the loop may run the thunk (which
            # closes that pipe) before the write, which then fails. The thunk ran: nothing is left to do.
            pass
        self.thread.join(timeout=5)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


@pytest.fixture
def serve(make_app):
    """Return a factory serving an app with setting overrides on loopback; every server stops after the test."""
    servers: list[LiveServer] = []

    def factory(**overrides) -> LiveServer:
        servers.append(LiveServer(make_app(**overrides)))
        return servers[-1]

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def live(app):
    """Serve the app on loopback; yields the LiveServer (its .url has no trailing slash)."""
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def openai_for():
    """Return a factory of official OpenAI clients for a served gateway (retries off), closed after the test."""
    clients: list[openai.OpenAI] = []

    def factory(server: LiveServer, api_key: str = CLIENT_KEY) -> openai.OpenAI:
        clients.append(openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=20))
        return clients[-1]

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def openai_client(live, openai_for):
    """The official OpenAI client pointed at the gateway."""
    return openai_for(live)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# Databases 1-15 of the shared redis-server, handed out in turn (0 is left to the tests that use key prefixes).
_REDIS_DATABASES = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_db(redis_server):
    """Return (url, client) for a database of the shared redis-server, emptied, as a gateway's REDIS_URL."""
    url = f"redis://127.0.0.1:{redis_server.port}/{next(_REDIS_DATABASES)}"
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


SESSION_ID, MESSAGE_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"
SAY_HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def traffic(live, openai_client, bridge, admin):
    """Real requests through the served gateway: two JSON answers (one through session team-a), one stream, one
    failure (no browser); returns a test client of the same app."""
    client = live.app.test_client()
    registered = client.post(
        "/session/register",
        headers=admin,
        json={"domain": "lmarena.ai", "session_name": "team-a", "session_id": SESSION_ID, "message_id": MESSAGE_ID},
    )
    assert registered.status_code == 201
    openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO)
    openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, extra_headers={"X-Session-Name": "team-a"})
    list(openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO, stream=True))
    bridge.no_browser = True
    with pytest.raises(openai.APIStatusError):
        openai_client.chat.completions.create(model="gpt-5", messages=SAY_HELLO)
    bridge.no_browser = False
    return client
