"""The long-stream sweep: how many long streams each server holds at once, how late their chunks come, what it costs.

Each target is started on its own, fresh (its memory is its own), warmed, then asked to hold 16, 64, 256 and 1,024
streams at once (bench/holdgen.py: a chunk every 100 ms for 30 s by default), one level after the other; its
processes' CPU and memory are read from /proc through each level. Passenger is asked only up to its pool: it serves
one request per process, so a level above the pool is queued by design, not measured.

    bench/.venv/bin/python bench/hold.py --targets direct,gw-waitress,gw-gevent --streams 16,256 --chunks 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients import run_cell
from holdgen import raise_open_files
from litellm_proxy import LiteLLM
from passenger import Passenger
from procs import TotalMemory, cpu_seconds, cpu_used
from servers import HERE, Direct, GunicornGevent, GunicornThreads, Mock, Server, Waitress

TARGETS = ("direct", "gw-waitress", "gw-gevent", "gw-passenger", "litellm")
LEVELS = (16, 64, 256, 1024)
SETTLE = 3.0  # seconds between levels, for the last level's connections to close
# Streams start evenly over max(MIN_RAMP, streams / START_RATE) s: 100 new streams a second at most, three times
# what 1,000 streams of 30 s need in a steady state, so what is measured is holding streams, not a burst of starts.
MIN_RAMP, START_RATE = 5.0, 100.0


def load() -> str:
    """Return the machine's load averages (1, 5, 15 min): other work beside the sweep shows here."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class HoldPlan:
    """What to hold, with what, for how long."""

    targets: list[str]
    levels: list[int] = field(default_factory=lambda: list(LEVELS))
    chunks: int = 300
    gap: float = 0.1
    ramp: float | None = None  # None: MIN_RAMP, or longer for more streams (see START_RATE)
    client_procs: int = 2
    passenger_pool: int = 64
    litellm_workers: int = 2
    workdir: Path = field(default_factory=lambda: HERE / ".cache" / "hold")


def make_target(name: str, mock: Mock, plan: HoldPlan) -> Server:
    """Return the server a target name stands for (candidates carry their sizes in the name)."""
    storage = plan.workdir / name
    if name == "direct":
        return Direct(mock)
    if name == "gw-waitress":
        return Waitress(mock.port, storage)
    if name.startswith("gw-waitress-"):  # gw-waitress-<threads>
        return Waitress(mock.port, storage, threads=int(name.rsplit("-", 1)[1]), name=name)
    if name == "gw-gevent":
        return GunicornGevent(mock.port, storage)
    if name.startswith("gw-gevent-"):  # gw-gevent-<workers>
        server = GunicornGevent(mock.port, storage, workers=int(name.rsplit("-", 1)[1]))
        server.name = name
        return server
    if name.startswith("gw-gthread-"):  # gw-gthread-<workers>x<threads>
        workers, threads = name.removeprefix("gw-gthread-").split("x")
        return GunicornThreads(mock.port, storage, int(workers), int(threads))
    if name == "gw-passenger":
        return Passenger(mock.port, plan.passenger_pool, HERE / ".cache" / "pip")
    if name == "litellm":
        return LiteLLM(mock.port, plan.litellm_workers)
    raise ValueError(f"unknown hold target {name!r}")


def warm(target: Server, plan: HoldPlan) -> None:
    """Warm the target's caches and connections; grow Passenger's pool to its full size before measuring."""
    for stream in (False, True):
        with contextlib.suppress(Exception):
            run_cell(target.endpoint, stream=stream, paced=False, concurrency=8, duration=1, warmup=0)
    if isinstance(target, Passenger):
        # Passenger spawns one process at a time (0.3-0.5 s each) while all are busy: hold `pool` short streams.
        deadline = time.monotonic() + 30 + plan.passenger_pool
        while target.app_processes() < plan.passenger_pool and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                run_cell(
                    target.endpoint, stream=True, paced=True, concurrency=plan.passenger_pool, duration=2, warmup=0
                )
        say(f"  passenger app processes: {target.app_processes()} of pool {plan.passenger_pool}")


def hold(target: Server, streams: int, plan: HoldPlan) -> dict:
    """Hold `streams` streams on target; return holdgen's figures with the target's CPU and memory meanwhile."""
    cell = {"target": target.name, "streams": streams, "at": time.time(), "load_before": load()}
    ramp = plan.ramp or max(MIN_RAMP, streams / START_RATE)
    pids = target.all_pids()
    before = cpu_seconds(pids)
    memory = TotalMemory(target.all_pids).start()
    started = time.monotonic()
    args = [
        sys.executable,
        str(HERE / "holdgen.py"),
        "--port",
        str(target.port),
        "--key",
        target.key,
        "--streams",
        str(streams),
        "--chunks",
        str(plan.chunks),
        "--gap",
        str(plan.gap),
        "--ramp",
        str(ramp),
        "--procs",
        str(plan.client_procs if streams > 64 else 1),
    ]
    if isinstance(target, Direct):
        args.append("--no-health")  # the mock has no /health
    else:
        args += ["--health-path", target.ready_path()]  # /health, or LiteLLM's own cheap one
    try:
        limit = ramp + plan.chunks * plan.gap + 90
        done = subprocess.run(args, capture_output=True, text=True, timeout=limit)
        if done.returncode:
            raise RuntimeError(f"holdgen failed ({done.returncode}): {done.stderr[-2000:]}")
        figures = json.loads(done.stdout)
    except Exception as exc:  # noqa: BLE001 - one failed level must not end the run
        memory.stop()
        return {**cell, "error": str(exc)[:2000]}
    seconds = time.monotonic() - started
    used = cpu_used(before, cpu_seconds(set(pids) | set(target.all_pids())))
    return {
        **cell,
        **figures,
        "wall_s": round(seconds, 1),
        "cpu_s": round(used, 2),
        "cpu_core_pct": round(used / seconds * 100, 1),
        # Per content chunk the mock sent (streams x chunks): what relaying one chunk costs, start-up included.
        "cpu_ms_per_chunk": used * 1000 / (streams * plan.chunks),
        "memory": memory.stop(),
        "load_after": load(),
    }


def run(plan: HoldPlan) -> dict:
    """Run the sweep for every target in turn (each started fresh, then stopped); return the cells and targets."""
    raise_open_files()  # children inherit it: servers and mock hold one or two descriptors per stream
    plan.workdir.mkdir(parents=True, exist_ok=True)
    mock = Mock(long_chunks=plan.chunks, long_gap=plan.gap)
    cells: list[dict] = []
    described: list[dict] = []
    try:
        mock.start(plan.workdir)
        for name in plan.targets:
            target = make_target(name, mock, plan)
            entry = {"name": target.name, "label": target.label, "unavailable": None}
            described.append(entry)
            say(f"hold: starting {target.label} ...")
            try:
                if isinstance(target, LiteLLM):
                    if target.version is None:
                        raise RuntimeError("not installed (bench/.venv-litellm): run bench/run.py once to install it")
                    target.spawn(plan.workdir / "litellm")
                    target.wait(150)
                else:
                    target.start(plan.workdir)
                warm(target, plan)
            except Exception as exc:  # noqa: BLE001 - report it, measure the others
                entry["unavailable"] = f"failed to start: {str(exc)[:1500]}"
                say(f"  {target.name} failed: {str(exc)[:600]}")
                with contextlib.suppress(Exception):
                    target.stop()
                continue
            try:
                for streams in plan.levels:
                    if isinstance(target, Passenger) and streams > plan.passenger_pool:
                        cells.append({"target": target.name, "streams": streams, "skipped": "above the pool"})
                        continue
                    cell = hold(target, streams, plan)
                    cells.append(cell)
                    say(line(cell))
                    time.sleep(SETTLE)
            finally:
                with contextlib.suppress(Exception):
                    target.stop()
    finally:
        with contextlib.suppress(Exception):
            mock.stop()
    meta = {"chunks": plan.chunks, "gap_s": plan.gap, "ramp_s": plan.ramp, "client_procs": plan.client_procs}
    return {"hold_meta": {**meta, "passenger_pool": plan.passenger_pool}, "hold": cells, "hold_targets": described}


def line(cell: dict) -> str:
    """Return one terminal line for a cell."""
    head = f"hold {cell['target']:18} {cell['streams']:>5} streams:"
    if "error" in cell:
        return f"{head} ERROR {cell['error'][:300]}"
    delay, health = cell["chunk_delay_ms"] or {}, cell["health_ms"] or {}
    return (
        f"{head} held {cell['held']}, completed {cell['completed']}, chunk delay p50 {delay.get('p50', 0):.1f} "
        f"p99 {delay.get('p99', 0):.1f} ms, health p50 {health.get('p50', 0):.1f} max {health.get('max', 0):.1f} ms "
        f"({cell['health_failed']} failed), CPU {cell['cpu_core_pct']}% of a core, "
        f"RSS {cell['memory']['rss_total_mib']} MiB, errors {cell['errors']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the sweep alone (bench/run.py --only hold runs it with the rest); print the cells as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--streams", default=",".join(map(str, LEVELS)))
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--ramp", type=float, default=None, help="seconds over which streams start (default: by N)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--passenger-pool", type=int, default=64)
    args = parser.parse_args(argv)
    plan = HoldPlan(
        targets=[t for t in args.targets.split(",") if t],
        levels=[int(x) for x in args.streams.split(",") if x],
        chunks=args.chunks,
        gap=args.gap,
        ramp=args.ramp,
        client_procs=args.client_procs,
        passenger_pool=args.passenger_pool,
    )
    print(json.dumps(run(plan), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
