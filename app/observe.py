"""Record one analytics event per /v1 request: JSON answers after the response, streams when they end."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, current_app, g, request

from .analytics import AnalyticsError, Recorder
from .config import ConfigError


def init_app(app: Flask) -> None:
    """Open the analytics database (unless GATEWAY_ENABLE_SESSION_ANALYTICS is off) and record /v1 answers."""
    app.extensions["analytics"] = None
    if not app.config["GATEWAY_ENABLE_SESSION_ANALYTICS"]:
        return
    try:
        app.extensions["analytics"] = Recorder(app.config["GATEWAY_ANALYTICS_PATH"])
    except AnalyticsError as exc:
        raise ConfigError(f"GATEWAY_ANALYTICS_PATH: {exc.message}") from None
    app.after_request(_record_answer)


def recorder() -> Recorder | None:
    """Return the current app's recorder, or None when analytics are off."""
    return current_app.extensions.get("analytics")


def base_event() -> dict[str, Any]:
    """Return what every event of this request shares (call inside the request)."""
    domain, _, name = (g.get("session") or "").partition("/")
    return {
        "request_id": g.get("request_id"),
        "domain": domain or None,
        "session_name": name or None,
        "provider": g.get("provider"),
        "model": g.get("model"),
    }


def _record_answer(response: Response) -> Response:
    # Streams are recorded when they end (see stream_observer); everything else here, off the request path.
    if request.path.startswith("/v1/") and response.mimetype != "text/event-stream" and recorder() is not None:
        usage = g.get("usage") or {}
        recorder().record(
            {
                **base_event(),
                "ts": time.time(),
                "stream": False,
                "status": response.status_code,
                "latency_ms": (time.perf_counter() - g.get("started", time.perf_counter())) * 1000,
                "error_code": g.get("error_code"),
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
            }
        )
    return response


class StreamObserver:
    """Collects one stream's outcome for its analytics event; the relay calls it from its generator."""

    def __init__(self, target: Recorder | None, event: dict[str, Any], started: float) -> None:
        self.target, self.event, self.started = target, event, started
        self.first_content: float | None = None
        if target is not None:
            target.stream_started(event["request_id"], event.get("provider"), event.get("model"))

    def opened(self, provider: str) -> None:
        self.event["provider"] = provider

    def content(self) -> None:
        if self.first_content is None:
            self.first_content = time.perf_counter()

    def finished(self, error_code: str | None, usage: dict[str, Any] | None) -> None:
        if self.target is None:
            return
        self.target.stream_ended(self.event["request_id"])
        usage = usage or {}
        self.target.record(
            {
                **self.event,
                "ts": time.time(),
                "stream": True,
                "status": 200,
                "error_code": error_code,
                "latency_ms": (time.perf_counter() - self.started) * 1000,
                "ttfb_ms": (self.first_content - self.started) * 1000 if self.first_content else None,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
            }
        )
