"""Record analytics events from a separate OS process (the several-processes test).

usage: analytics_worker.py PATH WORKER COUNT BARRIER [READ_EVERY]
  wait for BARRIER/go, record COUNT events, print the stats; with READ_EVERY, also read the aggregates every that
  many events, on fresh connections in this process, as the dashboard and /analytics do beside the recorder
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.analytics import Recorder, summary, timeseries  # noqa: E402


def make_event(worker: int, i: int) -> dict[str, Any]:
    """Return event i of a worker; the test recomputes the expected totals from this."""
    return {
        "request_id": f"w{worker}-{i}",
        "domain": "lmarena.ai",
        "session_name": f"worker-{worker}",
        "provider": f"p{worker % 2}",
        "model": "m",
        "stream": i % 2 == 0,
        "status": 500 if i % 5 == 0 else 200,
        "latency_ms": float(i % 100 * 10 + worker),
        "ttfb_ms": 5.0,
        "prompt_tokens": i % 7,
        "completion_tokens": i % 3,
    }


def main(path: str, worker: str, count: str, barrier: str, read_every: str = "0") -> None:
    number = int(worker)
    Path(barrier, f"ready-{number}").touch()
    go = Path(barrier, "go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    # Opening at the same moment as the others: on a new file, all of them race to create the schema.
    recorder = Recorder(path, flush_interval=0.01, max_batch=25)
    for i in range(int(count)):
        recorder.record(make_event(number, i))
        if int(read_every) and i % int(read_every) == 0:
            summary(path, 3600)
            timeseries(path, 3600, 60)
        if i % 50 == 0:
            recorder.stream_started(f"s{i}", f"p{number % 2}", "m")
            time.sleep(0.002)  # spread the writes so the processes' transactions interleave
            recorder.stream_ended(f"s{i}")
    recorder.stream_started("left-open", f"p{number % 2}", "m")
    recorder.close()
    print(json.dumps(recorder.stats()))


if __name__ == "__main__":
    main(*sys.argv[1:])
