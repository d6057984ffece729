"""The gateway's log on stderr: text lines, or one JSON object per line for log shippers; this instance's name."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from flask import Flask

# Loggers the gateway writes to stderr itself: its own, and (JSON only) the server `python -m app` runs, so that
# every line a JSON log holds parses.
GATEWAY_LOGGER = "app"
SERVER_LOGGER = "waitress"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def instance_id(config: dict[str, Any]) -> str:
    """Return this instance's name: GATEWAY_INSTANCE_ID, else host name and process id (`web1:4242`)."""
    # The pid is read each time: a server that forks after create_app (gunicorn --preload) has one per worker.
    return config["GATEWAY_INSTANCE_ID"] or f"{socket.gethostname()}:{os.getpid()}"


class JsonLines(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, instance, message, and a request line's fields."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line of JSON (newlines in messages escaped, never split)."""
        when = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "instance": instance_id(self.config),
            "message": record.getMessage(),
        }
        # A request line (request_record) carries its fields; they never hold keys, bodies or prompts.
        entry.update(getattr(record, "request", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):
    """Write to whatever sys.stderr is when a line is written (Passenger's log; a test's capture)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler's would pin today's sys.stderr

    @property
    def stream(self):
        return sys.stderr


def init_app(app: Flask) -> None:
    """Send the gateway's logs to stderr (Passenger's log), once per line, as text or JSON (GATEWAY_LOG_FORMAT)."""
    json_lines = app.config["GATEWAY_LOG_FORMAT"] == "json"
    formatter = JsonLines(app.config) if json_lines else logging.Formatter(TEXT_FORMAT)
    logger = logging.getLogger(GATEWAY_LOGGER)
    logger.setLevel(logging.DEBUG if app.config["DEBUG_MODE"] else logging.INFO)
    # Passenger's loader puts its own handler on the root logger: propagating would print every line twice, the
    # second time without level or logger name. Tests keep propagation for pytest's log capture.
    logger.propagate = bool(app.testing)
    _handler(logger).setFormatter(formatter)
    server = logging.getLogger(SERVER_LOGGER)
    if json_lines:
        _handler(server).setFormatter(formatter)
        server.propagate = False
    else:
        for handler in [h for h in server.handlers if isinstance(h, StderrHandler)]:
            server.removeHandler(handler)
        server.propagate = True


def _handler(logger: logging.Logger) -> StderrHandler:
    """Return the logger's stderr handler, added once per process however many apps are made."""
    for handler in logger.handlers:
        if isinstance(handler, StderrHandler):
            return handler
    handler = StderrHandler()
    logger.addHandler(handler)
    return handler
