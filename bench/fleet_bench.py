"""Several instances behind HAProxy: throughput of 1 against 3 gateway instances, and what the balancer hop adds.

Processes, all on this machine: the mock LMArenaBridge (`mock_upstream.py`), a private redis-server, three gateway
instances under gunicorn (gthread, 2 workers x 8 threads each, as tests/test_fleet_haproxy.py runs them) with
SESSION_STORE=redis, analytics (fleet-wide, in Redis) and the shared rate limit on but never reached, and two
HAProxy processes running haproxy/haproxy.cfg: one in front of instance 1 only, one in front of all three. Targets,
interleaved round by round (the order rotated each round), figures the median over rounds:

- `direct-1`: instance 1 itself;
- `haproxy-1`: HAProxy -> instance 1 (the hop alone: `direct-1` against this is what the balancer adds);
- `haproxy-3`: HAProxy -> instances 1-3, round robin.

Load: `loadgen.py`, closed loop, keep-alive, JSON chats and streamed chats (model `bench`), at concurrency 1 and 16.
On 2 cores every process shares the same CPUs, so 3 instances cannot be faster than 1: the figure is the cost of
the fleet (Redis round trips, the hop), not a speed-up.

Run: `python bench/fleet_bench.py [--rounds 3 --duration 5]` (needs gunicorn, haproxy and redis-server: see
README.md); writes `bench/results/<date>-<host>-fleet.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from servers import CLIENT_KEY, Mock, clean_environ, gateway_settings  # noqa: E402

from tests.helpers.gateway_process import gunicorn_command  # noqa: E402
from tests.helpers.haproxy import HAProxy  # noqa: E402
from tests.helpers.redis_server import RedisServer, free_port  # noqa: E402

INSTANCES = 3
MODES = {"json": [], "stream": ["--stream"]}


def start_instance(number: int, mock_port: int, redis_url: str, workdir: Path) -> tuple[subprocess.Popen, int]:
    """Start one gunicorn instance with its own storage folder; return it and its port once /health answers."""
    port = free_port()
    storage = workdir / f"gw{number}"
    storage.mkdir(parents=True)
    env = {
        **clean_environ(),
        **gateway_settings(mock_port),
        "SESSION_STORE": "redis",
        "REDIS_URL": redis_url,
        "GATEWAY_USERSCRIPT_SECRET": "bench-userscript-secret",
        "GATEWAY_DASHBOARD_SECRET": "bench-dashboard-secret",
        "STORAGE_PATH": str(storage / "sessions.json"),
        "GATEWAY_ANALYTICS_PATH": str(storage / "analytics.sqlite3"),
    }
    with open(workdir / f"gw{number}.log", "wb") as log:
        process = subprocess.Popen(
            gunicorn_command(port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"instance {number} exited: {(workdir / f'gw{number}.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return process, port
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"instance {number} did not answer within 60 s")


def load(port: int, mode: str, concurrency: int, duration: float, warmup: float) -> dict:
    """Run one cell of loadgen.py against a port; return its JSON figures."""
    command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--key", CLIENT_KEY,
               "-c", str(concurrency), "-d", str(duration), "-w", str(warmup), *MODES[mode]]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 120, check=True)
    return json.loads(done.stdout)


def cpu_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--render", type=Path, help="only print the table of an earlier results JSON")
    args = parser.parse_args(argv)
    if args.render:
        print(table(summarize(json.loads(args.render.read_text())["cells"])))
        return 0
    levels = [int(c) for c in args.concurrency.split(",")]
    started_at, load_before = datetime.now(UTC), cpu_load()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    mock, redis_server, balancers, instances = Mock(), None, [], []
    cells: dict[str, list[dict]] = {}
    try:
        mock.start(work)
        (work / "redis").mkdir()
        redis_server = RedisServer(work / "redis")
        for number in range(1, INSTANCES + 1):
            instances.append(start_instance(number, mock.port, redis_server.url, work))
        ports = [port for _, port in instances]
        balancers = [HAProxy(ports[:1], work / "haproxy-1"), HAProxy(ports, work / "haproxy-3")]
        targets = {"direct-1": ports[0], "haproxy-1": balancers[0].port, "haproxy-3": balancers[1].port}
        names = list(targets)
        for round_number in range(args.rounds):
            for mode in MODES:
                for concurrency in levels:
                    order = names[round_number % len(names) :] + names[: round_number % len(names)]
                    for name in order:
                        figures = load(targets[name], mode, concurrency, args.duration, args.warmup)
                        cells.setdefault(f"{name}|{mode}|{concurrency}", []).append(figures)
                        print(f"round {round_number + 1} {mode} c={concurrency} {name}: {figures['rps']:.0f} req/s",
                              file=sys.stderr)  # fmt: skip
    finally:
        for balancer in balancers:
            balancer.stop()
        for process, _ in instances:
            os.killpg(process.pid, signal.SIGTERM)  # gunicorn's master and workers
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if redis_server is not None:
            redis_server.stop()
        mock.stop()
    result = {
        "started": started_at.isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": cpu_load(),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "rows": summarize(cells),
        "cells": cells,
    }
    out = HERE / "results" / f"{started_at:%Y-%m-%d}-{socket.gethostname()}-fleet.json"
    out.write_text(json.dumps(result, indent=1))
    print(table(result["rows"]))
    print(f"load average {load_before} before, {result['load_average_after']} after; {out}")
    return 0


def summarize(cells: dict[str, list[dict]]) -> list[dict]:
    """Return one row per cell: medians over rounds, and the p50 added over direct-1 paired round by round."""
    rows = []
    for key, runs in cells.items():
        name, mode, concurrency = key.split("|")
        direct = cells.get(f"direct-1|{mode}|{concurrency}", [])
        added = [r["latency_ms"]["p50"] - d["latency_ms"]["p50"] for r, d in zip(runs, direct, strict=False)]
        rows.append(
            {
                "target": name,
                "mode": mode,
                "concurrency": int(concurrency),
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in runs),
                "errors": sum(sum(r["errors"].values()) for r in runs),
                "non_200": sum(n for r in runs for status, n in r["statuses"].items() if status != "200"),
                "added_p50_ms": statistics.median(added) if added and name != "direct-1" else None,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Return the rows as a markdown table; added p50 is against direct-1 in the same cell of the same round."""
    lines = [
        "| mode | c | target | req/s | p50 ms | p99 ms | added p50 ms | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["mode"], r["concurrency"], r["target"])):
        added = "" if r["added_p50_ms"] is None else f"{r['added_p50_ms']:+.2f}"
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | `{r['target']}` | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {added} | {r['errors'] + r['non_200']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
