"""Run one load cell with the right client: wrk for JSON answers, bench/loadgen.py for streams (or without wrk)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRK = shutil.which("wrk")
BODY = '{{"model":"{model}","messages":[{{"role":"user","content":"Say hello"}}],"stream":false}}'
SLACK = 90.0  # seconds a client may overrun its duration before it is killed


@dataclass(frozen=True)
class Endpoint:
    """Where a target listens and how a client authenticates to it."""

    port: int
    key: str
    path: str = "/v1/chat/completions"
    header: str = ""  # one extra header line, e.g. "X-Session-Name: bench"


def pinned(cpus: set[int] | None):
    """Return a preexec_fn that pins the child to cpus (None: no pinning)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_cell(
    endpoint: Endpoint,
    *,
    stream: bool,
    paced: bool,
    concurrency: int,
    duration: float,
    warmup: float,
    cpus: set[int] | None = None,
    force_python: bool = False,
) -> dict:
    """Drive one closed-loop cell and return its figures (same keys whichever client ran it)."""
    if not stream and WRK and not force_python:
        return _wrk(endpoint, concurrency, duration, warmup, cpus)
    args = [
        sys.executable,
        str(HERE / "loadgen.py"),
        "--port",
        str(endpoint.port),
        "--path",
        endpoint.path,
        "--key",
        endpoint.key,
        "--model",
        "bench-paced" if paced else "bench",
        "-c",
        str(concurrency),
        "-d",
        str(duration),
        "-w",
        str(warmup),
    ]
    if stream:
        args.append("--stream")
    if paced:
        args.append("--paced")
    if endpoint.header:
        args += ["--header", endpoint.header]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=duration + warmup + SLACK, preexec_fn=pinned(cpus)
    )
    if done.returncode:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _wrk(endpoint: Endpoint, concurrency: int, duration: float, warmup: float, cpus: set[int] | None) -> dict:
    """Run wrk (one thread: it does 10k+ req/s alone and leaves the CPU to the servers) after a warm-up run."""
    env = {
        **os.environ,
        "BENCH_BODY": BODY.format(model="bench"),
        "BENCH_KEY": endpoint.key,
        "BENCH_HEADER": endpoint.header,
    }
    url = f"http://127.0.0.1:{endpoint.port}{endpoint.path}"

    def wrk(seconds: float) -> dict:
        # wrk takes whole seconds.
        args = [WRK, "-t1", f"-c{concurrency}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "30s"]
        done = subprocess.run(
            [*args, "-s", str(HERE / "post.lua"), url],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + SLACK,
            preexec_fn=pinned(cpus),
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if done.returncode or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-1000:]}")
        return json.loads(line.removeprefix("BENCH_JSON "))

    warm = wrk(warmup) if warmup > 0 else {"requests": 0}
    raw = wrk(duration)
    seconds = raw["duration_us"] / 1e6
    errors = {k: v for k, v in raw["errors"].items() if v}
    return {
        "client": "wrk",
        "concurrency": concurrency,
        "duration_s": seconds,
        "requests": raw["requests"],
        "total_requests": raw["requests"] + warm["requests"],
        "measured_requests": raw["requests"],
        "rps": raw["requests"] / seconds,
        "latency_ms": {
            "p50": raw["p50_us"] / 1000,
            "p95": raw["p95_us"] / 1000,
            "p99": raw["p99_us"] / 1000,
            "max": raw["max_us"] / 1000,
            "mean": raw["mean_us"] / 1000,
            "n": raw["requests"],
        },
        "ttfb_ms": None,
        "chunk_delay_ms": None,
        # wrk counts non-2xx answers as status errors; it does not say which statuses they were.
        "statuses": {},
        "errors": errors,
    }
