"""`python -m app`: serve the gateway locally (waitress, on GATEWAY_HOST:GATEWAY_PORT, loopback by default).

`python -m app check URL --key K ...` checks a deployed gateway instead (app/smoke_check.py).
"""

from __future__ import annotations

import logging
import sys

from waitress import serve

from . import create_app
from .config import ConfigError
from .version import __version__

log = logging.getLogger(__package__)  # "app": run as a script, this module is __main__
# Connections accepted beyond the busy threads wait in waitress' queue (kept-alive idle ones cost no thread).
CONNECTIONS_OVER_THREADS = 100


# Bodies this far over GATEWAY_MAX_BODY_BYTES are still read, so the app refuses them with its own OpenAI-shaped 413;
# it also covers chunked framing, which waitress counts as body.
BODY_MARGIN = 64 * 1024

USAGE = "usage: python -m app            serve the gateway\n       python -m app check URL --key K [--help]"


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted (exit 2 with the setting's name when the configuration is bad), or run `check`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from .smoke_check import main as check  # needs no app: it calls one over HTTP

        return check(argv[1:])
    if argv:
        asked = argv[0] in ("-h", "--help")
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    try:
        app = create_app()
    except ConfigError as exc:
        print(f"lmarena-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    host, port = app.config["GATEWAY_HOST"], app.config["GATEWAY_PORT"]
    shown = f"[{host}]" if ":" in host else host
    # Through the log, so that with GATEWAY_LOG_FORMAT=json every line the process writes is JSON.
    log.info("LMArena AI Gateway %s: OpenAI base URL http://%s:%s/v1", __version__, shown, port)
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
        # waitress's own limit is 1 GB, spooled to disk before the app sees a byte: refuse larger bodies unread.
        max_request_body_size=app.config["GATEWAY_MAX_BODY_BYTES"] + BODY_MARGIN,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
