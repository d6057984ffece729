"""Benchmark the gateway's overhead, stream relay and session store beside the mock called directly and LiteLLM.

    bench/.venv/bin/python bench/run.py            # full run (~20 min)
    bench/.venv/bin/python bench/run.py --quick    # smoke run (a few minutes)
    bench/.venv/bin/python bench/run.py --only store
    bench/.venv/bin/python bench/run.py --only pools --no-readme   # pool member choice per request (~3 minutes)
    bench/.venv/bin/python bench/run.py --only hold --no-readme    # the long-stream sweep alone (~25 minutes)

Writes bench/results/<date>-<host>[-<parts>][-quick].json and the tables into bench/README.md (see that file).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hold
import pool_bench
import relay
import report
import store_bench
import tables
from clients import WRK
from servers import HERE, REPO

PARTS = ("relay", "store", "profile", "pools", "hold", "stalls")
TARGETS = (
    "direct",
    "bare-relay",
    "bare-gevent",
    "gw-waitress",
    "gw-gunicorn",
    "gw-gunicorn+session",
    "gw-gevent",
    "gw-passenger",
    "litellm",
)


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; --quick changes the defaults, explicit options still win."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s cells, shorter store phases")
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run, from {','.join(PARTS)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"relay targets, from {','.join(TARGETS)}")
    parser.add_argument("--concurrency", type=numbers, default=[1, 8, 32])
    parser.add_argument("--paced-concurrency", type=numbers, default=None, help="default 1,8 (quick: 1)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell (default 1, quick 0.5)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--passenger-pool", type=int, default=None, help="PassengerMaxPoolSize (default: max c)")
    parser.add_argument("--litellm-workers", type=int, default=2)
    parser.add_argument("--no-install", action="store_true", help="do not pip install litellm[proxy] when missing")
    parser.add_argument("--mock-procs", type=int, default=1)
    parser.add_argument("--pin", action="store_true", help="load generator and mock on CPU 1, servers on CPU 0")
    parser.add_argument("--python-client", action="store_true", help="use bench/loadgen.py for JSON cells too")
    parser.add_argument("--store-seconds", type=float, default=None, help="seconds per store phase (default 5)")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--pool-seconds", type=float, default=None, help="seconds per pool cell (default 2, quick 0.5)")
    parser.add_argument("--profile-seconds", type=float, default=None, help="py-spy seconds (default 8, quick 4)")
    parser.add_argument("--hold-targets", default=",".join(hold.TARGETS), help="targets of the long-stream sweep")
    parser.add_argument("--hold-streams", type=numbers, default=None, help="streams held at once (16,64,256,1024)")
    parser.add_argument("--hold-chunks", type=int, default=None, help="chunks per long stream (default 300, quick 50)")
    parser.add_argument("--hold-gap", type=float, default=0.1, help="seconds between a long stream's chunks")
    parser.add_argument("--hold-passenger-pool", type=int, default=64, help="Passenger's pool in the sweep")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md's table")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, profiles) under bench/.cache")
    parser.add_argument("--render", type=Path, help="only rewrite README.md's table from an earlier results JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "duration": 2.0 if quick else 5.0,
        "warmup": 0.5 if quick else 1.0,
        "rounds": 1 if quick else 3,
        "paced_concurrency": [1] if quick else [1, 8],
        "store_seconds": 2.0 if quick else 5.0,
        "pool_seconds": 0.5 if quick else 2.0,
        "profile_seconds": 4.0 if quick else 8.0,
        "passenger_pool": max(args.concurrency),
        "hold_streams": [16, 64] if quick else list(hold.LEVELS),
        "hold_chunks": 50 if quick else 300,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.parts = [p for p in args.only.split(",") if p]
    args.target_list = [t for t in args.targets.split(",") if t]
    unknown = (set(args.parts) - set(PARTS)) | (set(args.target_list) - set(TARGETS))
    if unknown:
        parser.error(f"unknown part or target: {', '.join(sorted(unknown))}")
    if "direct" not in args.target_list:
        args.target_list.insert(0, "direct")  # every "added" figure is paired with it
    return args


def _text(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(args: argparse.Namespace) -> dict:
    """Return what the numbers depend on: date, machine, software versions, run settings."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "app" / "version.py").read_text())
    wrk = _text([WRK, "--version"]) if WRK else ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "host": socket.gethostname(),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": (re.search(r"wrk (\S+)", wrk) or re.search(r"(.+)", wrk or "?")).group(1) if WRK else None,
        "gateway_version": version.group(1) if version else "?",
        "commit": _text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "dirty": bool(_text(["git", "-C", str(REPO), "status", "--porcelain", "--", "app", "requirements.txt"])),
        "mode": "quick" if args.quick else "full",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "paced_concurrency": args.paced_concurrency,
        "passenger_pool": args.passenger_pool,
        "pool_seconds": args.pool_seconds,
        "pinning": "load generator + mock on CPU 1, servers on CPU 0" if args.pin else "none (all share both cores)",
        "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def stalls() -> dict:
    """Run bench/hub_stalls.py in its own process (it patches the process for gevent) and return its figures."""
    with contextlib.suppress(subprocess.SubprocessError, ValueError, OSError):
        done = subprocess.run(
            [sys.executable, str(HERE / "hub_stalls.py")], capture_output=True, text=True, timeout=600, check=True
        )
        return json.loads(done.stdout)
    return {"error": "bench/hub_stalls.py failed (is gevent installed? pip install -r bench/requirements.txt)"}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, then write the JSON results and the README table."""
    args = arguments(argv)
    # SIGTERM unwinds like Ctrl-C, so every server this run started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.render:
        report.write_readme(HERE / "README.md", tables.markdown(json.loads(args.render.read_text())))
        return 0
    cache = HERE / ".cache"
    cache.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
    meta = machine(args)
    result: dict = {"meta": meta, "cells": [], "targets": [], "summary": [], "store": [], "profile": [], "pools": []}
    result.update(hold=[], hold_targets=[], hold_meta={}, hold_goals=[], stalls={})
    try:
        if "relay" in args.parts or "profile" in args.parts:
            plan = relay.Plan(
                targets=args.target_list,
                concurrency=args.concurrency if "relay" in args.parts else [],
                paced_concurrency=args.paced_concurrency if "relay" in args.parts else [],
                duration=args.duration,
                warmup=args.warmup,
                rounds=args.rounds,
                passenger_pool=args.passenger_pool,
                litellm_workers=args.litellm_workers,
                install_litellm=not args.no_install,
                mock_procs=args.mock_procs,
                client_cpus={1} if args.pin else None,
                server_cpus={0} if args.pin else None,
                python_client=args.python_client,
                profile_seconds=args.profile_seconds if "profile" in args.parts else 0.0,
                workdir=workdir,
            )
            result.update(relay.run(plan))
        if "store" in args.parts:
            relay.say(f"session store at {args.sessions:,} sessions ...")
            result["store"] = store_bench.run(args.sessions, args.store_seconds, workdir / "store")
        if "pools" in args.parts:
            relay.say(f"pool member choice at {args.sessions:,} sessions ...")
            result["pools"] = pool_bench.run(args.sessions, args.pool_seconds, workdir / "pools", args.rounds)
        if "stalls" in args.parts:
            relay.say("how long the gateway's blocking parts hold gevent's hub ...")
            result["stalls"] = stalls()
        if "hold" in args.parts:
            relay.say("long-stream sweep ...")
            result.update(
                hold.run(
                    hold.HoldPlan(
                        targets=[t for t in args.hold_targets.split(",") if t],
                        levels=args.hold_streams,
                        chunks=args.hold_chunks,
                        gap=args.hold_gap,
                        passenger_pool=args.hold_passenger_pool,
                        litellm_workers=args.litellm_workers,
                        workdir=workdir / "hold",
                    )
                )
            )
            result["hold_goals"] = report.check_hold_goals(result["hold"])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            relay.say(f"work folder kept: {workdir}")
    meta["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    summary = report.summarize(result["cells"])
    result["summary"] = [{"target": t, "mode": m, "concurrency": c, **row} for (t, m, c), row in summary.items()]
    gateways = [t["name"] for t in result["targets"] if t["name"].startswith("gw-") and "+" not in t["name"]]
    result["goals"] = report.check_goals(summary, result["store"], gateways)
    # A run of some parts only is named after them, so it never overwrites the day's full run.
    parts = "" if set(args.parts) == set(PARTS) else "-" + "-".join(args.parts)
    out = HERE / "results" / f"{time.strftime('%Y-%m-%d')}-{meta['host']}{parts}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    section = tables.markdown(result)
    print(section)
    if not args.no_readme:
        report.write_readme(HERE / "README.md", section)
    relay.say(f"results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
