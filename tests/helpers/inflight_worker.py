"""Hold in-flight leases from a separate OS process until killed (the killed-process test).

usage: inflight_worker.py STORE KEY COUNT LEASE_SECONDS READY
  STORE is an SQLite path or a redis:// URL; take COUNT leases on KEY (renewed every LEASE_SECONDS / 3), touch READY,
  then hold them for at most 60 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.inflight import InFlight  # noqa: E402
from app.store.inflight_leases import RedisSlots, SQLiteSlots  # noqa: E402


def main(store: str, key: str, count: str, lease_seconds: str, ready: str) -> None:
    slots = RedisSlots(store, prefix="inflight-test:") if store.startswith("redis://") else SQLiteSlots(store)
    limiter = InFlight(int(count), slots, lease_seconds=float(lease_seconds))
    leases = [limiter.acquire(key) for _ in range(int(count))]
    if None in leases:
        sys.exit("a slot was already taken")
    Path(ready).touch()
    time.sleep(60)


if __name__ == "__main__":
    main(*sys.argv[1:])
