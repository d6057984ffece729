"""gunicorn's settings for self-hosting: `make serve`, or `gunicorn` in this folder (it reads this file by itself).

gevent workers hold each request in a greenlet rather than a thread, so an open stream costs a few KiB and no thread:
one worker per core, each holding up to WORKER_CONNECTIONS connections (bench/README.md: two workers held 1,024
streams of 30 s at once on 2 cores). Needs requirements-serve.txt (gevent), which cPanel must not install: Passenger
serves there. It listens on GATEWAY_HOST:GATEWAY_PORT, read from the environment or .env as the app reads them;
gunicorn's own options (`--workers 4`, `--bind`) still override what is set here.

Nothing from app/ is imported here: this file is read by gunicorn's master before a worker patches for gevent.
"""

import os
from pathlib import Path

from dotenv import dotenv_values

WORKER_CONNECTIONS = 1000


def _setting(name: str, default: str) -> str:
    """Return a setting from the environment, else from .env (GATEWAY_ENV_FILE moves or, empty, disables it)."""
    if name in os.environ:
        return os.environ[name]
    chosen = os.environ.get("GATEWAY_ENV_FILE")
    path = Path(__file__).resolve().parent / (".env" if chosen is None else chosen) if chosen != "" else None
    values = dotenv_values(path) if path is not None and path.is_file() else {}
    return values.get(name) or default


_host, _port = _setting("GATEWAY_HOST", "127.0.0.1"), _setting("GATEWAY_PORT", "5104")

wsgi_app = "app:create_app()"
bind = [f"[{_host}]:{_port}" if ":" in _host else f"{_host}:{_port}"]
worker_class = "gevent"
workers = os.cpu_count() or 1
worker_connections = WORKER_CONNECTIONS
# Each worker listens on its own socket and the kernel spreads new connections: without it one worker can take
# most kept-alive connections while another idles.
reuse_port = True
keepalive = 5
# An LMArena answer streams for up to a minute: a reload (HUP) or stop lets the open ones finish first.
graceful_timeout = 65
