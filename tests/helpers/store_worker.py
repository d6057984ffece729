"""Drive the real JSON session store from a separate OS process (multi-process and fault tests).

usage: store_worker.py register PATH PREFIX COUNT ACKFILE   register COUNT sessions, logging each once it returned
       store_worker.py heartbeat PATH PREFIX COUNT ROUNDS ACKFILE   heartbeat sessions PREFIX-0..COUNT-1 ROUNDS
                                                            times, logging "name stamp" once each returned
       store_worker.py fsize-limit PATH BYTES               register one session with writes capped at BYTES
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.errors import StoreError  # noqa: E402
from app.store.base import Session, utcnow  # noqa: E402
from app.store.file_store import JsonSessionStore  # noqa: E402

NO_LIMIT = 10**9


def _session(name: str) -> Session:
    return Session("lmarena.ai", name, str(uuid.uuid4()), str(uuid.uuid4()))


def register(path: str, prefix: str, count: str, ack: str) -> None:
    store = JsonSessionStore(path, lock_timeout=60)
    with open(ack, "a", encoding="utf-8") as acks:
        for i in range(int(count)):
            now = utcnow()
            store.register(_session(f"{prefix}-{i}"), now=now, limit=NO_LIMIT, active_since=now - timedelta(hours=1))
            acks.write(f"{prefix}-{i}\n")
            acks.flush()


def heartbeat(path: str, prefix: str, count: str, rounds: str, ack: str) -> None:
    store = JsonSessionStore(path, lock_timeout=60)
    with open(ack, "a", encoding="utf-8") as acks:
        for _ in range(int(rounds)):
            for i in range(int(count)):
                seen = store.heartbeat("lmarena.ai", f"{prefix}-{i}", now=utcnow())
                if seen is None:
                    sys.exit(f"{prefix}-{i} not found")
                acks.write(f"{prefix}-{i} {seen.last_seen_at}\n")
                acks.flush()


def fsize_limit(path: str, limit: str) -> None:
    # A real "disk full" for this process: writes past the limit fail with EFBIG instead of killing it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    store = JsonSessionStore(path)
    now = utcnow()
    try:
        store.register(_session("too-big-" + "x" * 50), now=now, limit=NO_LIMIT, active_since=now)
    except StoreError as exc:
        print(json.dumps({"error": exc.code, "message": exc.message}))
        return
    print(json.dumps({"error": None}))


if __name__ == "__main__":
    {"register": register, "heartbeat": heartbeat, "fsize-limit": fsize_limit}[sys.argv[1]](*sys.argv[2:])
