"""Per-key rate limit on /v1: GCRA arithmetic, OpenAI-style 429s, and one count shared by every process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest

from app.config import ConfigError
from app.ratelimit import Limiter, RedisCells, SQLiteCells
from tests.conftest import CLIENT_KEY

HI = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
WORKER = str(Path(__file__).parent / "helpers" / "ratelimit_worker.py")


@pytest.fixture(params=["sqlite", "redis"])
def cells(request, tmp_path):
    if request.param == "sqlite":
        cells = SQLiteCells(str(tmp_path / "ratelimit.sqlite3"))
    else:
        cells = RedisCells(request.getfixturevalue("redis_server").url, prefix=f"t-{uuid.uuid4().hex[:8]}:")
    yield cells
    cells.close()


def chat_calls(bridge) -> int:
    return len([r for r in bridge.requests if r.path == "/v1/chat/completions"])


def test_a_burst_passes_then_the_pace_holds(cells):
    limiter = Limiter(per_minute=60, burst=3, cells=cells)  # one a second, three at once
    t = 1_000_000.0
    decisions = [limiter.check("k", now=t) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after == pytest.approx(1.0)
    assert decisions[2].reset_after == pytest.approx(3.0)
    assert not limiter.check("k", now=t + 0.99).allowed
    assert limiter.check("k", now=t + 1.0).allowed  # one more a second later
    assert not limiter.check("k", now=t + 1.0).allowed
    later = limiter.check("k", now=t + 60)
    assert later.allowed and later.remaining == 2  # a quiet minute gives the whole burst back
    assert limiter.check("other", now=t + 1.0).allowed  # keys are counted apart


def test_leases_are_spent_locally_and_never_pass_more_than_the_burst(cells):
    one, other = Limiter(6000, 100, cells), Limiter(6000, 100, cells)  # two processes; leases of 5 (50 ms)
    assert one.lease == 5
    t = 2_000_000.0
    assert one.check("k", now=t).allowed  # takes 5 from the shared count, spends 1
    assert sum(other.check("k", now=t).allowed for _ in range(99)) == 95
    assert sum(one.check("k", now=t).allowed for _ in range(20)) == 4  # what was left of its lease
    assert not other.check("k", now=t).allowed
    assert other.check("k", now=t + 0.01).allowed  # 0.01 s is one request at 6,000 a minute


def test_a_lapsed_lease_hands_back_what_it_did_not_spend(cells):
    one, other = Limiter(6000, 1000, cells), Limiter(6000, 1000, cells)
    t = 5_000_000.0
    one.check("k", now=t)  # a lease of 5, 4 left unused
    assert sum(other.check("k", now=t).allowed for _ in range(1000)) == 995
    later = t + one.lease_seconds + 0.0001  # 100 requests' worth of time later; one's lease has lapsed
    assert one.check("k", now=later).allowed  # hands back 4, takes 5 more
    assert sum(other.check("k", now=later).allowed for _ in range(200)) == 100 + 4 - 5


def test_threads_at_a_high_limit_never_see_a_false_429(tmp_path):
    # 16 threads for a while at a limit far above their pace: leases must not be taken (and wasted) in a herd.
    limiter = Limiter(1_000_000, 0, SQLiteCells(str(tmp_path / "rl.sqlite3")))
    assert limiter.lease == 833  # 50 ms at this rate, not a tenth of the 100,000 burst
    t0 = 4_000_000.0
    refused = []

    def worker(offset: int) -> None:
        for i in range(2000):
            now = t0 + i * 0.002 + offset * 1e-6  # 3 seconds of 500 requests/s per thread, leases lapsing
            if not limiter.check("k", now=now).allowed:
                refused.append(now)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert refused == []
    limiter.close()


def test_many_processes_at_a_high_limit_never_see_a_false_429(cells):
    # Passenger's pool of 32, each process at 15 requests/s against 1,000,000 a minute: leases lapse all the
    # time, and what they leave unused must not pile up in the shared count.
    processes = [Limiter(1_000_000, 0, cells) for _ in range(32)]
    t0 = 6_000_000.0
    refused = 0
    for step in range(150):  # 10 simulated seconds
        now = t0 + step / 15
        refused += sum(not limiter.check("k", now=now).allowed for limiter in processes)  # all at once
    assert refused == 0


def test_an_unused_lease_lapses(cells):
    limiter = Limiter(6000, 100, cells)
    t = 3_000_000.0
    limiter.check("k", now=t)
    assert limiter._leases["k"][0] == 4
    limiter.check("k", now=t + limiter.lease_seconds + 0.5)  # too late for the old lease: a new one
    assert limiter._leases["k"][0] == 4


def test_burst_defaults_to_a_tenth_of_a_minute(cells):
    assert Limiter(per_minute=300, burst=0, cells=cells).burst == 30
    assert Limiter(per_minute=5, burst=0, cells=cells).burst == 1


def test_over_the_limit_is_an_openai_429_and_never_reaches_upstream(make_app, auth, bridge):
    client = make_app(GATEWAY_RATE_LIMIT_PER_MINUTE=60, GATEWAY_RATE_LIMIT_BURST=2).test_client()
    first = client.post("/v1/chat/completions", json=HI, headers=auth)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert client.post("/v1/chat/completions", json=HI, headers=auth).status_code == 200
    refused = client.post("/v1/chat/completions", json=HI, headers=auth)
    assert refused.status_code == 429
    assert refused.get_json() == {
        "error": {
            "message": refused.get_json()["error"]["message"],
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert "60 requests per minute" in refused.get_json()["error"]["message"]
    assert refused.headers["Retry-After"] == "1"
    assert 0 < int(refused.headers["retry-after-ms"]) <= 1000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert chat_calls(bridge) == 2
    assert client.get("/v1/models", headers=auth).status_code == 429  # all of /v1 shares the key's allowance
    assert client.get("/health").status_code == 200  # the rest of the gateway does not count


def test_the_built_in_default_is_off_and_sends_no_ratelimit_headers(client, app, auth):
    from app.config import SETTINGS

    assert next(s.default for s in SETTINGS if s.name == "GATEWAY_RATE_LIMIT_PER_MINUTE") == 0  # as the README says
    assert app.config["GATEWAY_RATE_LIMIT_PER_MINUTE"] == 0
    answer = client.post("/v1/chat/completions", json=HI, headers=auth)
    assert answer.status_code == 200
    assert not [name for name in answer.headers.keys() if name.lower().startswith("x-ratelimit-")]


def test_each_key_has_its_own_allowance_and_wrong_keys_do_not_count(make_app, bridge):
    app = make_app(GATEWAY_API_KEYS="sk-one,sk-two", GATEWAY_RATE_LIMIT_PER_MINUTE=60, GATEWAY_RATE_LIMIT_BURST=1)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=HI, headers={"X-API-Key": "sk-wrong"}).status_code == 401
    assert client.post("/v1/chat/completions", json=HI, headers={"Authorization": "Bearer sk-one"}).status_code == 200
    assert client.post("/v1/chat/completions", json=HI, headers={"X-API-Key": "sk-one"}).status_code == 429
    assert client.post("/v1/chat/completions", json=HI, headers={"X-API-Key": "sk-two"}).status_code == 200


def test_an_open_gateway_limits_by_address(make_app, bridge):
    client = make_app(GATEWAY_API_KEYS="", GATEWAY_RATE_LIMIT_PER_MINUTE=60, GATEWAY_RATE_LIMIT_BURST=1).test_client()
    assert client.get("/v1/models", environ_base={"REMOTE_ADDR": "127.0.0.2"}).status_code == 200
    assert client.get("/v1/models", environ_base={"REMOTE_ADDR": "127.0.0.2"}).status_code == 429
    assert client.get("/v1/models", environ_base={"REMOTE_ADDR": "127.0.0.3"}).status_code == 200


def test_the_official_client_sees_a_rate_limit_error(serve, openai_for):
    server = serve(GATEWAY_RATE_LIMIT_PER_MINUTE=60, GATEWAY_RATE_LIMIT_BURST=1)
    client = openai_for(server)
    client.chat.completions.create(**HI)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**HI)
    assert caught.value.code == "rate_limit_exceeded"


def test_keys_are_not_stored_in_the_limit_file(make_app, auth, tmp_path):
    app = make_app(GATEWAY_RATE_LIMIT_PER_MINUTE=600)
    app.test_client().get("/v1/models", headers=auth)
    stored = (Path(app.config["STORAGE_PATH"]).parent / "ratelimit.sqlite3").read_bytes()
    assert CLIENT_KEY.encode() not in stored


@pytest.mark.slow  # 4 worker processes
def test_processes_share_one_allowance_exactly(tmp_path):
    path, barrier, workers = str(tmp_path / "ratelimit.sqlite3"), tmp_path / "barrier", 4
    barrier.mkdir()
    SQLiteCells(path).close()
    procs = [
        subprocess.Popen([sys.executable, WORKER, path, "40", str(barrier)], stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    deadline = time.monotonic() + 30
    while len(list(barrier.glob("ready-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.005)
    (barrier / "go").touch()
    passed = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * workers
    assert sum(passed) == 50  # the burst, exactly: 160 tries at once, none counted twice or lost


def test_a_broken_limit_file_lets_requests_through_and_says_so(make_app, auth, caplog):
    app = make_app(GATEWAY_RATE_LIMIT_PER_MINUTE=60, GATEWAY_RATE_LIMIT_BURST=1)
    path = Path(app.config["STORAGE_PATH"]).parent / "ratelimit.sqlite3"
    app.extensions["ratelimit"].cells.close()
    path.write_bytes(b"this is not a database" * 100)
    client = app.test_client()
    assert [client.get("/v1/models", headers=auth).status_code for _ in range(3)] == [200] * 3
    assert caplog.text.count("rate limit state unavailable") == 1  # once, not once a request


def test_an_unusable_limit_file_fails_at_start_up(make_app, tmp_path):
    storage = tmp_path / "elsewhere"
    (storage / "ratelimit.sqlite3").mkdir(parents=True)  # a folder where the file belongs
    with pytest.raises(ConfigError, match="GATEWAY_RATE_LIMIT_PER_MINUTE: the rate limit file .* cannot be used"):
        make_app(GATEWAY_RATE_LIMIT_PER_MINUTE=60, STORAGE_PATH=str(storage / "sessions.json"))
