"""Run the gateway locally: `python -m app` (waitress, on GATEWAY_HOST:GATEWAY_PORT, loopback by default)."""

from __future__ import annotations

import logging
import sys

from waitress import serve

from . import create_app
from .config import ConfigError
from .version import __version__

log = logging.getLogger(__package__)  # "app": run as a script, this module is __main__

# Bodies this far over GATEWAY_MAX_BODY_BYTES are still read, so the app refuses them with its own OpenAI-shaped 413;
# it also covers chunked framing, which waitress counts as body.
BODY_MARGIN = 64 * 1024


def main() -> int:
    """Serve until interrupted; exit 2 with the setting's name when the configuration is bad."""
    try:
        app = create_app()
    except ConfigError as exc:
        print(f"lmarena-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    host, port = app.config["GATEWAY_HOST"], app.config["GATEWAY_PORT"]
    shown = f"[{host}]" if ":" in host else host
    # Through the log, so that with GATEWAY_LOG_FORMAT=json every line the process writes is JSON.
    log.info("LMArena AI Gateway %s: OpenAI base URL http://%s:%s/v1", __version__, shown, port)
    serve(
        app,
        host=host,
        port=port,
        threads=app.config["GATEWAY_THREADS"],
        ident="lmarena-gateway",
        # waitress's own limit is 1 GB, spooled to disk before the app sees a byte: refuse larger bodies unread.
        max_request_body_size=app.config["GATEWAY_MAX_BODY_BYTES"] + BODY_MARGIN,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
