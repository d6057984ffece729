"""Where a gateway process spends its time under load: py-spy samples, summed per code area and per function."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from clients import run_cell

PY_SPY = Path(sys.executable).parent / "py-spy"
PROCESS = re.compile(r"^process \d+:")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Code areas, by the files a sample's stack passes through (a sample counts once per area it touches).
AREAS = {
    "Flask/Werkzeug request handling": ("flask/", "werkzeug/"),
    "WSGI server": ("waitress/", "gunicorn/"),
    "upstream HTTP (requests/urllib3/http.client)": ("requests/", "urllib3/", "http/client.py"),
    "SSE parsing and stream reads (app/sse.py, providers/sse_stream.py)": ("app/sse.py", "app/providers/sse_stream"),
    "stream relay (app/relay.py, providers/dispatch.py)": ("app/relay.py", "app/providers/dispatch.py"),
    "upstream exchange (providers/transport.py, providers/exchange.py)": (
        "app/providers/transport.py",
        "app/providers/exchange.py",
    ),
    "rate limit (app/ratelimit.py, SQLite)": ("app/ratelimit.py",),
    "request record and analytics (app/request_record.py, app/analytics/)": ("app/request_record.py", "app/analytics/"),
    "auth (app/auth.py)": ("app/auth.py",),
    "validation (app/validation.py)": ("app/validation.py",),
    "routing and model list (router, cache, bridge pool)": (
        "app/providers/router.py",
        "app/providers/cache.py",
        "app/providers/bridge_pool.py",
    ),
    "circuit breaker (app/providers/breaker.py)": ("app/providers/breaker.py",),
    "security headers (app/security_headers.py)": ("app/security_headers.py",),
    "session and pool lookup (app/session_rules.py, app/pool_rules.py)": ("app/session_rules.py", "app/pool_rules.py"),
    "JSON encode/decode": ("json/",),
}


# Leaf frames that wait rather than work. py-spy --gil keeps the last GIL holder while every thread waits, so such
# samples are idle time, not CPU: they are left out of the shares.
WAITS = frozenset(
    {
        "Condition.wait",
        "Event.wait",
        "Thread.join",
        "EpollSelector.select",
        "PollSelector.select",
        "SelectSelector.select",
        "poll_wait_for_socket.<locals>.do_poll",
        "SocketIO.readinto",
        "socket.accept",
        "_worker",
        "Queue.get",
        "sleep",
        # Leaves whose only C call blocks: the relay's wait for upstream bytes (poll, or select, on the socket;
        # py-spy shows no frame for a C function, so the caller is the leaf).
        "_readable",
    }
)


def record(pid: int, seconds: float, out: Path, rate: int = 100, subprocesses: bool = False) -> Path:
    """Sample pid (and its children) for `seconds` without pausing it; write py-spy's raw collapsed stacks."""
    args = [str(PY_SPY), "record", "--pid", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate)]
    args += ["--nonblocking", "-f", "raw", "-o", str(out)]
    if subprocesses:
        args.append("--subprocesses")
    subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return out


def parse(raw: str) -> list[tuple[list[str], int]]:
    """Return (frames root first, count) per line of py-spy's raw output."""
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        # With --subprocesses each stack starts with a `process <pid>:"<command>"` frame: not code.
        frames = [f for f in stack.split(";") if f and not PROCESS.match(f)]
        if frames and count.isdigit():
            stacks.append((frames, int(count)))
    return stacks


def _where(frame: str) -> tuple[str, str, str]:
    found = FRAME.match(frame)
    if not found:
        return frame, "", ""
    return found["func"], found["file"] or "", found["line"] or ""


def _owner(places: list[tuple[str, str, str]]) -> str:
    """Return the area of the innermost frame that belongs to one (stdlib frames count for their caller)."""
    for _, file, _ in reversed(places):
        for area, needles in AREAS.items():
            if any(n in file for n in needles):
                return area
        if file.startswith("app/") and not file.startswith("app/store/"):  # store files count for their caller
            return "other gateway code (app/: views, dispatch, providers)"
    return "other"


def summarize(raw: str, top: int = 15) -> dict:
    """Return busy-sample shares: per area (innermost owner, and inclusive), top app/ functions, top leaf lines."""
    stacks = parse(raw)
    every = sum(count for _, count in stacks)
    stacks = [(frames, count) for frames, count in stacks if _where(frames[-1])[0] not in WAITS]
    total = sum(count for _, count in stacks) or 1
    areas: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        places = [_where(f) for f in frames]
        for area, needles in AREAS.items():
            if any(n in file for _, file, _ in places for n in needles):
                areas[area] += count
        owners[_owner(places)] += count
        seen = set()
        for func, file, _ in places:
            if file.startswith("app/") and (func, file) not in seen:
                seen.add((func, file))
                functions[f"{file}:{func}"] += count
        func, file, line = places[-1]
        leaves[f"{file}:{line} {func}"] += count
    share = lambda n: round(100 * n / total, 1)  # noqa: E731
    return {
        "samples": every,
        "busy_samples": total,
        "areas_self": {area: share(n) for area, n in owners.most_common()},
        "groups": {area: share(n) for area, n in areas.most_common()},
        "app_functions_inclusive": {name: share(n) for name, n in functions.most_common(top)},
        "leaf_lines_self": {name: share(n) for name, n in leaves.most_common(top)},
    }


def profile_targets(targets: list, seconds: float, workdir: Path, cpus: set[int] | None = None) -> list[dict]:
    """Sample each gateway (its whole process tree) with py-spy under c=8 JSON load, then c=8 stream load."""
    results = []
    for target in targets:
        if not PY_SPY.exists():
            break
        for mode in ("json", "stream"):
            out = workdir / f"profile-{target.name}-{mode}.txt"
            entry = {"target": target.name, "mode": mode, "concurrency": 8}
            load = threading.Thread(
                target=run_cell,
                args=(target.endpoint,),
                kwargs={
                    "stream": mode == "stream",
                    "paced": False,
                    "concurrency": 8,
                    "duration": seconds + 2,
                    "warmup": 0,
                    "cpus": cpus,
                },
            )
            load.start()
            try:
                time.sleep(1)  # let the load settle before sampling
                record(target.proc.pid, seconds, out, subprocesses=len(target.worker_pids()) > 1)
                results.append({**entry, **summarize(out.read_text())})
            except Exception as exc:  # noqa: BLE001 - a failed profile must not end the run
                results.append({**entry, "error": str(exc)[:500], "samples": 0})
            finally:
                load.join(timeout=seconds + 120)
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(summarize(Path(sys.argv[1]).read_text()), indent=2, ensure_ascii=False))
