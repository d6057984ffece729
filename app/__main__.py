"""Run the gateway locally: `python -m app` (waitress, on GATEWAY_HOST:GATEWAY_PORT, loopback by default)."""

from __future__ import annotations

import sys

from waitress import serve

from . import create_app
from .config import ConfigError
from .version import __version__

# Connections accepted beyond the busy threads wait in waitress' queue (kept-alive idle ones cost no thread).
CONNECTIONS_OVER_THREADS = 100


def main() -> int:
    """Serve until interrupted; exit 2 with the setting's name when the configuration is bad."""
    try:
        app = create_app()
    except ConfigError as exc:
        print(f"lmarena-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    host, port = app.config["GATEWAY_HOST"], app.config["GATEWAY_PORT"]
    shown = f"[{host}]" if ":" in host else host
    print(f"LMArena AI Gateway {__version__}: OpenAI base URL http://{shown}:{port}/v1", flush=True)
    threads = app.config["GATEWAY_THREADS"]
    # An open stream holds its thread until it ends, so threads are the streams served at once. Waitress' own
    # limit of 100 connections would cap them first; poll() rather than select(), which fails past descriptor 1024.
    serve(
        app,
        host=host,
        port=port,
        threads=threads,
        connection_limit=threads + CONNECTIONS_OVER_THREADS,
        asyncore_use_poll=True,
        ident="lmarena-gateway",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
