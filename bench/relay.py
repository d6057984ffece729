"""The relay benchmark: start every target, run interleaved cells, sample memory and CPU, profile, stop them all."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hotspots as spy
from clients import run_cell
from litellm_proxy import LiteLLM, install
from passenger import Passenger
from procs import MemoryWatch, cpu_seconds, cpu_used
from servers import HERE, BareGevent, BareRelay, Direct, Gunicorn, GunicornGevent, Mock, Server, Waitress, WithSession
from store_bench import write_json_store

SESSIONS = 10_000
SESSION_NAME = "bench"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Plan:
    """What to run and for how long."""

    targets: list[str]
    concurrency: list[int]
    paced_concurrency: list[int]
    duration: float
    warmup: float
    rounds: int
    passenger_pool: int
    litellm_workers: int = 2
    install_litellm: bool = True
    mock_procs: int = 1
    client_cpus: set[int] | None = None  # pinning: load generator and mock
    server_cpus: set[int] | None = None  # pinning: servers under test
    python_client: bool = False
    profile_seconds: float = 0.0
    workdir: Path = field(default_factory=lambda: HERE / ".cache")


def cells(plan: Plan) -> list[tuple[str, int]]:
    """Return the (mode, concurrency) cells of one round."""
    return (
        [("json", c) for c in plan.concurrency]
        + [("stream", c) for c in plan.concurrency]
        + [("paced", c) for c in plan.paced_concurrency]
    )


def start_targets(plan: Plan, mock: Mock) -> tuple[list[Server], list[Server]]:
    """Start every wanted target; return (started, unavailable), each unavailable one with its reason set."""
    wanted, work = set(plan.targets), plan.workdir
    direct = Direct(mock)
    direct.start(work)
    started: list[Server] = [direct]
    failed: list[Server] = []
    litellm = LiteLLM(mock.port, plan.litellm_workers) if "litellm" in wanted else None
    if litellm is not None:
        try:
            if litellm.version is None and plan.install_litellm:
                say("installing litellm[proxy] into bench/.venv-litellm (minutes) ...")
                install()
                litellm = LiteLLM(mock.port, plan.litellm_workers)
            if litellm.version is None:
                raise RuntimeError("not installed (bench/.venv-litellm); run without --no-install to install it")
            litellm.spawn(work / "litellm", plan.server_cpus)  # it starts for 10-45 s while the others start
        except Exception as exc:  # noqa: BLE001 - the rest of the run goes on without it
            litellm.unavailable = f"unavailable: {exc}"
            failed.append(litellm)
            litellm = None
    gateways: list[Server] = [cls(mock.port) for cls in (BareRelay, BareGevent) if cls.name in wanted]
    for cls in (Waitress, Gunicorn, GunicornGevent):
        if cls.name not in wanted and f"{cls.name}+session" not in wanted:
            continue
        server = cls(mock.port, work / cls.name)
        # The session variant looks its session up among 10,000 others, like a busy gateway would.
        write_json_store(work / cls.name / "sessions.json", SESSIONS)
        gateways.append(server)
    if "gw-passenger" in wanted:
        gateways.append(Passenger(mock.port, plan.passenger_pool, HERE / ".cache" / "pip"))
    for server in gateways:
        if isinstance(server, Gunicorn) and not Gunicorn.binary().exists():
            server.unavailable = "unavailable: gunicorn is not installed (pip install -r bench/requirements.txt)"
            failed.append(server)
            continue
        say(f"starting {server.label} ...")
        try:
            server.start(work, plan.server_cpus)
            started.append(server)
        except Exception as exc:  # noqa: BLE001 - report it, measure the others
            server.unavailable = f"failed to start: {str(exc)[:3000]}"
            failed.append(server)
            say(f"  {server.name} failed: {str(exc)[:600]}")
    if litellm is not None:
        say(f"waiting for {litellm.label} ...")
        try:
            litellm.wait(150)
            started.append(litellm)
        except Exception as exc:  # noqa: BLE001
            litellm.unavailable = f"failed to start: {str(exc)[:3000]}"
            litellm.stop()
            failed.append(litellm)
    for server in list(started):
        wanted_variant = f"{server.name}+session"
        if wanted_variant in wanted:
            variant = WithSession(server, SESSION_NAME)
            try:
                variant.start(work)
                started.append(variant)
            except Exception as exc:  # noqa: BLE001
                variant.unavailable = f"failed: {exc}"
                failed.append(variant)
    order = {name: i for i, name in enumerate(plan.targets)}
    started = [s for s in started if s.name in order]
    started.sort(key=lambda s: order[s.name])
    return started, failed


def prime(plan: Plan, targets: list[Server]) -> None:
    """Warm every target (connections, model list cache); grow Passenger's pool to its size before measuring."""
    for target in targets:
        for stream in (False, True):
            with contextlib.suppress(Exception):
                run_cell(target.endpoint, stream=stream, paced=False, concurrency=8, duration=1, warmup=0)
        if isinstance(target, Passenger):
            # Passenger spawns one process at a time (0.3-0.5 s each) when all are busy: hold `pool` slow streams.
            deadline = time.monotonic() + 30 + plan.passenger_pool
            while target.app_processes() < plan.passenger_pool and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    run_cell(
                        target.endpoint, stream=True, paced=True, concurrency=plan.passenger_pool, duration=2, warmup=0
                    )
            say(f"  passenger app processes: {target.app_processes()} of pool {plan.passenger_pool}")


def measure(plan: Plan, mock: Mock, target: Server, mode: str, concurrency: int, number: int) -> dict:
    """Run one cell against one target; add CPU per request of its processes and its upstream connections."""
    pids = target.all_pids()
    upstream = mock.stats()
    before = cpu_seconds(pids)
    cell = {"round": number, "target": target.name, "mode": mode, "concurrency": concurrency, "at": time.time()}
    try:
        figures = run_cell(
            target.endpoint,
            stream=mode != "json",
            paced=mode == "paced",
            concurrency=concurrency,
            duration=plan.duration,
            warmup=plan.warmup,
            cpus=plan.client_cpus,
            force_python=plan.python_client,
        )
    except Exception as exc:  # noqa: BLE001 - one failed cell must not end the run
        return {**cell, "error": str(exc)[:2000]}
    used = cpu_used(before, cpu_seconds(set(pids) | set(target.all_pids())))
    total = figures.get("total_requests") or 0
    figures["cpu_ms_per_request"] = used * 1000 / total if total else None
    after = mock.stats()
    if upstream and after and not isinstance(target, Direct):
        # A relay that pools its upstream connections opens a handful per cell, not one per request.
        # The second stats request opened a connection of its own: not the relay's.
        opened, asked = (
            after["connections"] - upstream["connections"] - 1,
            after["chat_requests"] - upstream["chat_requests"],
        )
        figures["upstream"] = {
            "connections": opened,
            "requests": asked,
            "per_request": opened / asked if asked else None,
        }
    return {**cell, **figures}


def run(plan: Plan) -> dict:
    """Run the relay benchmark; return cells, targets (with memory) and profiles. Every server is stopped after."""
    mock = Mock(plan.mock_procs)
    started: list[Server] = []
    failed: list[Server] = []
    watches: dict[str, MemoryWatch] = {}
    results: list[dict] = []
    profiles: list[dict] = []
    try:
        mock.start(plan.workdir, plan.client_cpus)
        started, failed = start_targets(plan, mock)
        prime(plan, started)
        for server in [mock, *started]:
            if not isinstance(server, (Direct, WithSession)):
                watches[server.name] = MemoryWatch(server.worker_pids).start()
        for number in range(plan.rounds):
            turn = number % len(started)
            ordered = started[turn:] + started[:turn]
            for mode, concurrency in cells(plan):
                for target in ordered:
                    if mode != "json" and isinstance(target, WithSession):
                        continue
                    cell = measure(plan, mock, target, mode, concurrency, number)
                    results.append(cell)
                    say(_line(cell))
        if plan.profile_seconds:
            gateways = [t for t in started if isinstance(t, (Waitress, Gunicorn)) and not isinstance(t, BareRelay)]
            profiles = spy.profile_targets(gateways, plan.profile_seconds, plan.workdir, plan.client_cpus)
    finally:
        memory = {name: watch.stop() for name, watch in watches.items()}
        for server in reversed([*started, *failed]):
            with contextlib.suppress(Exception):
                server.stop()
        with contextlib.suppress(Exception):
            mock.stop()
    described = [_describe(mock, memory)]
    for server in [*started, *failed]:
        described.append(_describe(server, memory))
    return {"cells": results, "targets": described, "profile": profiles}


def _describe(server: Server, memory: dict) -> dict:
    entry = {"name": server.name, "label": server.label, "unavailable": server.unavailable}
    if server.name in memory:
        entry["memory"] = memory[server.name]
    if isinstance(server, Passenger):
        entry["added_untracked_files"] = server.added
    return entry


def _line(cell: dict) -> str:
    head = f"[r{cell['round'] + 1}] {cell['mode']:6} c={cell['concurrency']:<2} {cell['target']:22}"
    if "error" in cell:
        return f"{head} ERROR {cell['error'][:300]}"
    text = (
        f"{head} {cell['rps']:8.1f}/s p50 {cell['latency_ms']['p50'] if cell['latency_ms'] else float('nan'):8.2f} ms"
    )
    if cell.get("ttfb_ms"):
        text += f"  ttfb p50 {cell['ttfb_ms']['p50']:7.2f} ms"
    if cell.get("chunk_delay_ms"):
        text += f"  chunk p50 {cell['chunk_delay_ms']['p50']:6.2f} ms"
    if cell.get("upstream"):
        text += f"  upstream conns {cell['upstream']['connections']}/{cell['upstream']['requests']} req"
    if cell.get("cpu_ms_per_request") is not None:
        text += f"  cpu {cell['cpu_ms_per_request']:.2f} ms/req"
    if cell["errors"]:
        text += f"  errors {cell['errors']}"
    return text
