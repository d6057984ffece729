"""Pool member choice per request: what choosing among N members adds over one named session, and its store reads.

One gateway app in this process (`create_app`, its JSON store filled with 10,000 sessions; the Redis store too when
redis-server is installed), and no upstream: each "request" runs, in a pushed request context, the routing a chat
request runs before its first upstream byte, then the dispatcher's choice of provider (`Dispatcher._run` with an
attempt that returns at once, so breaker and cooldown checks run as for a real request and nothing is sent):

- `session`: `X-Session-Name` -> `session_rules.session_from_headers` (the store's `find`), `resolve_model`,
  `Router.plan`, `Router.dispatcher`, the choice (breaker `allow`, then `success`);
- `pool-N`: `X-Session-Pool` over N active members -> `pool_target`, `pool_members` (listed at most once a second
  per process), `Router.plan_pool` (`Pools.request`: every member's cooldown), `Router.dispatcher`, the choice
  (breaker `allow`, the member's cooldown, then `success`).

Store reads are counted by wrapping, here and not in app/, the session store (calls of find/get/list), the breaker's
state (get: the cached reads) and what lies under them: the sessions file (`LockedJsonFile.read`, an os.stat, parsed
again only after a change), the heartbeat table (SQLite queries), the breaker file (read when its 0.5 s cache ran
out), and Redis commands. "warm" is a closed loop (caches as busy traffic keeps them); "cold" is one request after
the caches ran out (a pause longer than the member list's 1 s and the breaker's 0.5 s), as a quiet gateway sees.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import store_bench  # noqa: E402

from app import create_app  # noqa: E402
from app.pool_rules import MEMBERS_SECONDS, pool_members, pool_target  # noqa: E402
from app.providers import get_router  # noqa: E402
from app.providers.dispatch import Beat  # noqa: E402
from app.session_rules import resolve_model, session_from_headers  # noqa: E402
from app.store.base import Session  # noqa: E402
from app.store.breaker_state import FileState, RedisState  # noqa: E402

MEMBERS = (2, 8, 32)
DOMAIN = "lmarena.ai"
MODEL = "gpt-5"
COLD_SAMPLES = 3
MAX_OPS = 2_000_000  # a bound for every loop; the clock ends them long before
# Where the members' bridges would be: loopback ports nothing listens on (nothing is sent to them).
BRIDGE = "http://127.0.0.1:{}"


class Counted:
    """Stand in for an object, counting calls of the named methods into counts under prefix + name."""

    def __init__(self, inner, names: set[str], counts: Counter, prefix: str) -> None:
        self._inner, self._names, self._counts, self._prefix = inner, names, counts, prefix

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name not in self._names or not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self._counts[self._prefix + name] += 1
            return attr(*args, **kwargs)

        return counted


def instrument(app, kind: str, counts: Counter):
    """Wrap the app's session store and breaker state (and what lies under them) in counters; return the undo."""
    store = app.extensions["session_store"]
    breaker = get_router().breaker
    state = breaker.state
    under = (
        [(store, "file"), (store, "seen"), (state, "file")]
        if kind == "json"
        else [(store, "client"), (state, "client")]
    )
    saved = [(owner, name, getattr(owner, name)) for owner, name in under]
    saved += [(app.extensions, "session_store", store), (breaker, "state", state)]
    if kind == "json":
        store.file = Counted(store.file, {"read"}, counts, "sessions file: ")
        store.seen = Counted(store.seen, {"all", "get"}, counts, "heartbeat table: ")
        state.file = Counted(state.file, {"read"}, counts, "breaker file: ")
    else:
        # The store's pipeline is its batched read of a listing; the breaker's is a write (WATCH/MULTI), not counted.
        reads = {"hgetall", "zrange", "smembers", "pipeline"}
        store.client = Counted(store.client, reads, counts, "redis (sessions): ")
        state.client = Counted(state.client, {"get", "mget"}, counts, "redis (breaker): ")
    app.extensions["session_store"] = Counted(store, {"find", "get", "list"}, counts, "session store: ")
    breaker.state = Counted(state, {"get", "update"}, counts, "breaker state: ")

    def undo() -> None:
        for owner, name, value in saved:
            if isinstance(owner, dict):
                owner[name] = value
            else:
                setattr(owner, name, value)

    return undo


def register(app, name: str, port: int, pool: str | None) -> None:
    """Register an active session bound to the bridge at port, in pool."""
    store = app.extensions["session_store"]
    now = datetime.now(UTC)
    ids = store_bench.uuid_for(port), store_bench.uuid_for(port, 1)
    session = Session(DOMAIN, name, *ids, bridge_base_url=BRIDGE.format(port), pool=pool)
    store.register(session, now=now, limit=10**6, active_since=now)


def choose(dispatcher):
    """Return the provider the dispatcher picks, as it would before sending (nothing is sent)."""

    def attempt(provider, timeout):
        return provider
        yield  # a step that never waits

    steps = dispatcher._run(attempt, Beat(float("inf")))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value[0]


def route_session():
    """Route one request naming a session, as api/chat.py does, and choose its provider."""
    session = session_from_headers()
    model, _ = resolve_model(session, MODEL)
    router = get_router()
    plan = router.plan(model, None, session.bridge_base_url, True, session_key=session.bridge_api_key)
    return choose(router.dispatcher(plan))


def route_pool():
    """Route one request naming a pool, as api/chat.py does, and choose its member."""
    target = pool_target()
    model, _ = resolve_model(None, MODEL)
    router = get_router()
    plan, pool = router.plan_pool(model, None, *target, pool_members(*target))
    return choose(router.dispatcher(plan, pool))


def measure(app, kind: str, headers: dict, route, seconds: float) -> dict:
    """Time route in a closed loop for seconds; then count its store reads, warm and after the caches ran out."""
    result: dict = {}
    with app.test_request_context("/v1/chat/completions", method="POST", headers=headers):
        chosen = set()
        for _ in range(200):  # warm: member list, bridges, breaker records
            chosen.add(route().breaker_key)
        times: list[int] = []
        deadline = time.monotonic() + seconds
        for _ in range(MAX_OPS):
            if time.monotonic() >= deadline:
                break
            started = time.perf_counter_ns()
            chosen.add(route().breaker_key)
            times.append(time.perf_counter_ns() - started)
        result["requests"] = len(times)
        result["per_s"] = len(times) / (sum(times) / 1e9)
        result["latency_us"] = store_bench.percentiles_us(times)
        result["members_chosen"] = len(chosen)
        # Counted apart from the timing: the counting wrappers cost time of their own.
        counts: Counter = Counter()
        undo = instrument(app, kind, counts)
        try:
            counted, deadline = 0, time.monotonic() + seconds
            while counted < MAX_OPS and time.monotonic() < deadline:
                route()
                counted += 1
            result["warm_reads"] = {k: v / counted for k, v in sorted(counts.items())}
            cold_counts: Counter = Counter()
            for _ in range(COLD_SAMPLES):
                time.sleep(max(MEMBERS_SECONDS, FileState.CACHE_SECONDS, RedisState.CACHE_SECONDS) + 0.1)
                counts.clear()
                route()
                cold_counts.update(counts)
            result["cold_reads"] = {k: v / COLD_SAMPLES for k, v in sorted(cold_counts.items())}
        finally:
            undo()
        cold_times = []
        for _ in range(COLD_SAMPLES):  # and timed without the wrappers
            time.sleep(max(MEMBERS_SECONDS, FileState.CACHE_SECONDS, RedisState.CACHE_SECONDS) + 0.1)
            started = time.perf_counter_ns()
            route()
            cold_times.append(time.perf_counter_ns() - started)
        result["cold_us"] = statistics.median(cold_times) / 1000
    return result


def bench_backend(kind: str, settings: dict, sessions: int, seconds: float, rounds: int) -> dict:
    """Return the session and pool-N figures for one store backend already holding `sessions`."""
    app = create_app(settings)
    try:
        with app.app_context():
            register(app, "bench-single", 40_999, None)
            for n in MEMBERS:
                for i in range(n):  # pools share bridges: member i of every pool is on port 41000 + i
                    register(app, f"pool{n}-member{i:02d}", 41_000 + i, f"pool{n}")
        scenarios = {"session": ({"X-Session-Name": "bench-single"}, route_session)}
        scenarios.update({f"pool-{n}": ({"X-Session-Pool": f"pool{n}"}, route_pool) for n in MEMBERS})
        runs: dict[str, list[dict]] = {name: [] for name in scenarios}
        for number in range(rounds):  # interleaved, the order rotated each round
            names = list(scenarios)
            for name in names[number % len(names) :] + names[: number % len(names)]:
                headers, route = scenarios[name]
                runs[name].append(measure(app, kind, headers, route, seconds))
    finally:
        app.extensions["router"].close()
        for service in ("analytics", "ratelimit"):
            if app.extensions.get(service) is not None:
                app.extensions[service].close()
    result = {"backend": kind, "sessions": sessions, "rounds": rounds, "seconds": seconds, "scenarios": {}}
    for name, found in runs.items():
        result["scenarios"][name] = {
            "members": int(name.split("-")[1]) if name.startswith("pool-") else 1,
            "members_chosen": min(r["members_chosen"] for r in found),
            "per_s": statistics.median(r["per_s"] for r in found),
            **{f"{k}_us": statistics.median(r["latency_us"][k] for r in found) for k in ("mean", "p50", "p99")},
            "cold_us": statistics.median(r["cold_us"] for r in found),
            "warm_reads": found[-1]["warm_reads"],
            "cold_reads": found[-1]["cold_reads"],
        }
    base = result["scenarios"]["session"]
    for figures in result["scenarios"].values():
        figures["added_mean_us"] = figures["mean_us"] - base["mean_us"]
        figures["added_p50_us"] = figures["p50_us"] - base["p50_us"]
    return result


def settings_for(workdir: Path, **extra) -> dict:
    """Return the app settings: a configured bridge nothing listens on, keys, data under workdir."""
    return {
        "GATEWAY_ENV_FILE": "",
        "LMARENA_BRIDGE_BASE_URL": BRIDGE.format(40_998),
        "GATEWAY_API_KEYS": "sk-bench",
        "GATEWAY_ADMIN_KEY": "sk-bench-admin",
        "STORAGE_PATH": str(workdir / "sessions.json"),
        "GATEWAY_ANALYTICS_PATH": str(workdir / "analytics.sqlite3"),
        **extra,
    }


def run(sessions: int = 10_000, seconds: float = 2.0, workdir: Path | None = None, rounds: int = 3) -> list[dict]:
    """Bench pool choice on the JSON store (and Redis when installed); return one result per backend."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="pools-", dir=HERE / ".cache")) if own else workdir
    results = []
    try:
        json_dir = workdir / "json"
        store_bench.write_json_store(json_dir / "sessions.json", sessions)
        results.append(bench_backend("json", settings_for(json_dir), sessions, seconds, rounds))
        if shutil.which("redis-server"):
            redis_dir = workdir / "redis"
            redis_dir.mkdir(parents=True)
            server = store_bench.RedisServer(redis_dir)
            try:
                store_bench.fill_redis(server.url, sessions)
                redis = settings_for(redis_dir, SESSION_STORE="redis", REDIS_URL=server.url)
                results.append(bench_backend("redis", redis, sessions, seconds, rounds))
            finally:
                server.stop()
        else:
            results.append({"backend": "redis", "unavailable": "redis-server is not installed"})
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


if __name__ == "__main__":
    import json

    (HERE / ".cache").mkdir(exist_ok=True)
    print(json.dumps(run(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 2.0), indent=2))
