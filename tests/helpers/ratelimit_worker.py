"""Count requests against one shared rate limit from a separate OS process (the several-processes test).

usage: ratelimit_worker.py PATH COUNT BARRIER   wait for BARRIER/go, check COUNT times, print how many passed
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.ratelimit import Limiter, SQLiteCells  # noqa: E402


def main(path: str, count: str, barrier: str) -> None:
    limiter = Limiter(per_minute=1, burst=50, cells=SQLiteCells(path))  # nothing refills during the test
    Path(barrier, f"ready-{time.monotonic_ns()}").touch()
    go = Path(barrier, "go")
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    print(sum(limiter.check("key:shared").allowed for _ in range(int(count))))
    limiter.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
