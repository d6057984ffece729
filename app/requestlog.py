"""Request ids, response headers that say who served, and one log line per request when asked."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, current_app, g, request

log = logging.getLogger("app.requests")

# A caller's id is kept only if it cannot smuggle anything into headers or log lines.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def init_app(app: Flask) -> None:
    """Give every request an id and, with LOG_REQUESTS, a log line."""
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


def _finish(response):
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers["X-Request-Id"] = request_id
    provider = g.get("provider")
    if provider:
        response.headers["X-Gateway-Provider"] = provider
    if g.get("attempts"):
        response.headers["X-Gateway-Attempts"] = str(g.attempts)
    if current_app.config["LOG_REQUESTS"]:
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        # repr() keeps model ids with newlines or emoji on one line; keys and bodies are never logged.
        log.info(
            "%s %r %s %.1fms id=%s provider=%s model=%r",
            request.method,
            request.path,
            response.status_code,
            elapsed,
            request_id,
            provider or "-",
            g.get("model"),
        )
    return response
