"""A bounded load run against the gateway under Apache + mod_passenger: nothing fails, nothing is lost, memory holds.

32 clients for GATEWAY_LOAD_SECONDS (default 60) mix JSON chats, streamed chats, session registrations and model
lists, with every feature on (analytics, the shared rate limit, the JSON session store). Set GATEWAY_LOAD_REPORT to
a path to keep the figures as JSON (docs/RELIABILITY.md quotes them).
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.upstreams.fake_bridge import FakeBridge

from .apache import wait_until

pytestmark = pytest.mark.deploy

SECONDS = float(os.environ.get("GATEWAY_LOAD_SECONDS", "60"))
CLIENTS = 32
NAMES_PER_CLIENT = 6
MAX_CALLS_PER_CLIENT = 100_000  # a bound for the loop; the clock ends it long before
WARM_UP = min(10.0, SECONDS / 4)
BRIDGE_KEY = "sk-lmab-load"
CLIENT_KEY = "sk-gw-load"
ADMIN_KEY = "sk-admin-load"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"Authorization": f"Bearer {CLIENT_KEY}"}
REPLY = "Hello from the real bridge"
CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
MIX = ["chat"] * 4 + ["stream"] * 3 + ["register"] * 2 + ["models"]


@dataclass
class Tally:
    """What one client saw."""

    calls: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    acknowledged: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> ids of the last 2xx


@pytest.fixture(scope="module")
def load_bridge():
    fake = FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.02, response_delay=0.005)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def load_site(deployment, load_bridge):
    env = {
        "LMARENA_BRIDGE_BASE_URL": load_bridge.url,
        "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_CONCURRENT_SESSIONS_LIMIT": "1000",
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000000",  # counted on every request, never reached
        "GATEWAY_ENABLE_SESSION_ANALYTICS": "true",
    }
    with deployment.site(env=env, pool_size=4) as site:
        yield site


def one_call(http: requests.Session, kind: str, client: int, rng: random.Random, tally: Tally, base: str) -> None:
    started = time.monotonic()
    if kind == "chat":
        answer = http.post(base + "/v1/chat/completions", json=CHAT, headers=USER, timeout=60)
        ok = answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == REPLY
    elif kind == "stream":
        answer = http.post(
            base + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=USER, timeout=60, stream=True
        )
        data = [line[6:] for line in answer.iter_lines(decode_unicode=True) if line.startswith("data: ")]
        text = "".join(
            (json.loads(d)["choices"] or [{}])[0].get("delta", {}).get("content") or "" for d in data[:-1]
        )
        ok = answer.status_code == 200 and data[-1:] == ["[DONE]"] and text == REPLY
    elif kind == "register":
        name = f"load-{client}-{rng.randrange(NAMES_PER_CLIENT)}"
        ids = (str(uuid.uuid4()), str(uuid.uuid4()))
        body = {"domain": "lmarena.ai", "session_name": name, "session_id": ids[0], "message_id": ids[1]}
        answer = http.post(base + "/session/register", json=body, headers=ADMIN, timeout=60)
        ok = answer.status_code in (200, 201)
        if ok:
            tally.acknowledged[name] = ids  # this client alone writes this name, so the last 2xx must stay
    else:
        answer = http.get(base + "/v1/models", headers=USER, timeout=60)
        ok = answer.status_code == 200 and any(m["id"] == "gpt-5" for m in answer.json()["data"])
    tally.latencies.append(time.monotonic() - started)
    tally.calls[kind] += 1
    tally.statuses[answer.status_code] += 1
    if not ok:
        tally.failures.append(f"{kind} {answer.status_code} {answer.text[:200]!r}")


def client_loop(client: int, base: str, deadline: float) -> Tally:
    rng = random.Random(client)
    tally = Tally()
    with requests.Session() as http:
        for _ in range(MAX_CALLS_PER_CLIENT):
            if time.monotonic() >= deadline:
                break
            kind = rng.choice(MIX)
            try:
                try:
                    one_call(http, kind, client, rng, tally, base)
                except requests.ConnectionError as exc:
                    if "RemoteDisconnected" not in str(exc):
                        raise
                    # Apache may close an idle keep-alive connection as the next request goes out (its event MPM
                    # does so under load); HTTP lets a client retry then, and the openai SDK does. Once, counted.
                    tally.calls["keepalive_retry"] += 1
                    one_call(http, kind, client, rng, tally, base)
            except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
                tally.failures.append(f"exception {type(exc).__name__}: {exc}")
    return tally


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) if found else None


def test_sustained_mixed_load_loses_nothing(load_site, load_bridge):
    base = load_site.url
    started = time.monotonic()
    deadline = started + SECONDS
    memory: dict[str, dict[int, int]] = {}

    def sample(label: str, at: float) -> None:
        # Sleep in short steps so a failed run does not hold this thread for long.
        while time.monotonic() < at and time.monotonic() < deadline:
            time.sleep(0.2)
        memory[label] = {pid: kib for pid in load_site.app_pids() if (kib := rss_kib(pid)) is not None}

    sampler = threading.Thread(target=sample, args=("warm", started + WARM_UP), daemon=True)
    sampler.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        tallies = list(pool.map(lambda c: client_loop(c, base, deadline), range(CLIENTS)))
    sampler.join(timeout=5)
    sample("end", 0)
    elapsed = time.monotonic() - started

    calls = sum((t.calls for t in tallies), Counter())
    statuses = sum((t.statuses for t in tallies), Counter())
    failures = [f for t in tallies for f in t.failures]
    latencies = sorted(x for t in tallies for x in t.latencies)
    acknowledged = {name: ids for t in tallies for name, ids in t.acknowledged.items()}
    answered = sum(n for kind, n in calls.items() if kind != "keepalive_retry")

    stored = requests.get(base + "/session/list", headers=ADMIN, params={"domain": "lmarena.ai"}, timeout=60).json()
    kept = {s["session_name"]: (s["session_id"], s["message_id"]) for s in stored["data"]}
    lost = sorted(name for name, ids in acknowledged.items() if kept.get(name) != ids)
    common = sorted(set(memory.get("warm", {})) & set(memory["end"]))
    growth_mib = {pid: (memory["end"][pid] - memory["warm"][pid]) / 1024 for pid in common}
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(elapsed, 1),
        "clients": CLIENTS,
        "requests": answered,
        "requests_per_second": round(answered / elapsed, 1),
        "calls": dict(calls),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
        "sessions_acknowledged": len(acknowledged),
        "sessions_lost": len(lost),
        "rss_mib_warm": {str(p): round(memory["warm"][p] / 1024, 1) for p in common},
        "rss_mib_end": {str(p): round(memory["end"][p] / 1024, 1) for p in common},
    }
    if os.environ.get("GATEWAY_LOAD_REPORT"):
        Path(os.environ["GATEWAY_LOAD_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")

    assert not [s for s in statuses if s >= 500], report
    assert failures == [], (failures[:10], report)
    assert lost == [], (lost[:10], report)
    assert min(calls[k] for k in ("chat", "stream", "register", "models")) > 0, report
    assert calls["keepalive_retry"] <= answered // 200, report  # a rare race, not a pattern
    assert len(acknowledged) > CLIENTS  # most clients registered several names
    assert common, f"no app process lived through the run: {memory}"
    assert max(growth_mib.values()) < 16, (growth_mib, report)
    # Each event reached the analytics database from whichever process served it.
    chats = calls["chat"] + calls["stream"] + calls["models"]
    wait_until(lambda: dashboard_requests(base) >= chats, 15, "every /v1 request on the dashboard")
    assert "Traceback" not in load_site.error_log() + load_site.passenger_log()


def dashboard_requests(base: str) -> int:
    html = requests.get(base + "/dashboard", headers=ADMIN, timeout=60).text
    found = re.search(r'id="total-requests">([\d,]+)', html)
    return int(found.group(1).replace(",", "")) if found else -1
