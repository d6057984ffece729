"""What one request did, in one object: its id, who served it, its outcome; headers, log line and analytics from it."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, g, request

from .analytics import Recorder, recorder

if TYPE_CHECKING:
    from .inflight import Lease

log = logging.getLogger("app.requests")

# The one analytics label for every model name no provider knows (a client's typo, or a made-up name per request).
UNKNOWN_MODEL = "(unknown)"
# A caller's id is kept only if it cannot smuggle anything into headers or log lines.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class RequestRecord:
    """One request's state: written by the views and the error handler, read when its answer (or stream) ends."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    # Whether the model is one the gateway knows (listed, routed, aliased, in a session's map): True, False, or None
    # when no list can say. Analytics name only known models, so made-up names cannot grow /metrics without end.
    model_known: bool | None = None
    provider: str | None = None
    attempts: int = 0
    domain: str | None = None
    session_name: str | None = None
    pool: str | None = None
    # The public URL (no credentials) of the LMArena bridge that answered, or was asked last.
    bridge: str | None = None
    usage: dict[str, Any] | None = None
    error_code: str | None = None
    first_content: float | None = None
    # Set for a stream: it records its own event when it ends, long after the view has returned.
    recorder: Recorder | None = field(default=None, repr=False)
    # The client key's in-flight slot while the view runs (a stream's response takes it over).
    in_flight: Lease | None = field(default=None, repr=False)
    # Set for a stream when LOG_REQUESTS is on: its log line, written when it ends (its length and error known).
    log_fields: dict[str, Any] | None = field(default=None, repr=False)

    def served_by(self, provider: str | None, attempts: int | None = None, bridge: str | None = None) -> None:
        """Note who answered (or was asked last), after how many attempts, and through which bridge."""
        if provider:
            self.provider = provider
        if attempts:
            self.attempts = attempts
        if bridge:
            self.bridge = bridge

    def event(self, status: int, stream: bool) -> dict[str, Any]:
        """Return the request's analytics event."""
        usage = self.usage or {}
        now = time.perf_counter()
        return {
            "request_id": self.request_id,
            "domain": self.domain,
            "session_name": self.session_name,
            "provider": self.provider,
            "model": self.model if self.model_known or (self.model_known is None and status < 400) else UNKNOWN_MODEL,
            "ts": time.time(),
            "stream": stream,
            "status": status,
            "error_code": self.error_code,
            "latency_ms": (now - self.started) * 1000,
            "ttfb_ms": (self.first_content - self.started) * 1000 if self.first_content else None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }

    # A stream's life, told by the relay after the request context is gone.

    def stream_started(self, target: Recorder | None) -> None:
        """Count the stream as open on the dashboard until stream_finished()."""
        self.recorder = target
        if target is not None:
            target.stream_started(self.request_id, self.provider, self.model)

    def content(self) -> None:
        """Note the moment the first content went out (later calls change nothing)."""
        if self.first_content is None:
            self.first_content = time.perf_counter()

    def stream_finished(self, usage: dict[str, Any]) -> None:
        """Record the stream's event (status 200: its errors travel in the body) and write its log line."""
        self.usage = usage
        if self.recorder is not None:
            self.recorder.stream_ended(self.request_id)
            self.recorder.record(self.event(200, stream=True))
        if self.log_fields is not None:
            fields, self.log_fields = self.log_fields, None  # one line, however the stream ended
            self.log_line(fields)

    def log_line(self, fields: dict[str, Any]) -> None:
        """Log the request's line: text, or (GATEWAY_LOG_FORMAT=json) these fields and who served; never keys."""
        duration = (time.perf_counter() - self.started) * 1000
        fields = {
            **fields,
            "request_id": self.request_id,
            "provider": self.provider,
            "bridge": self.bridge,
            "model": self.model,
            "domain": self.domain,
            "session": self.session_name,
            "pool": self.pool,
            "attempts": self.attempts or None,
            "duration_ms": round(duration, 1),
            "error_code": self.error_code,
        }
        # repr() keeps model ids with newlines or emoji on one line; keys and bodies are never logged.
        log.info(
            "%s %r %s %.1fms id=%s provider=%s model=%r%s%s",
            fields["method"],
            fields["path"],
            fields["status"],
            duration,
            self.request_id,
            self.provider or "-",
            self.model,
            " stream" if fields["stream"] else "",
            f" error={self.error_code}" if self.error_code else "",
            extra={"request": fields},
        )


def current() -> RequestRecord:
    """Return this request's record (made here if a hook before _start already needs it)."""
    record = g.get("_record")
    if record is None:
        record = g._record = RequestRecord(uuid.uuid4().hex)
    return record


def init_app(app: Flask) -> None:
    """Give every request a record and an id; answer with who served; log a line and record /v1 answers."""
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g._record = RequestRecord(incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex)


def _finish(response: Response) -> Response:
    record = current()
    response.headers["X-Request-Id"] = record.request_id
    if record.provider:
        response.headers["X-Gateway-Provider"] = record.provider
    if record.attempts:
        response.headers["X-Gateway-Attempts"] = str(record.attempts)
    stream = response.mimetype == "text/event-stream"
    if response.status_code >= 400 and not stream:
        record.error_code = _error_code(response)
    # Streams are recorded, and logged, when they end (RequestRecord.stream_finished); every other answer here.
    target = recorder()
    if target is not None and request.path.startswith("/v1/") and not stream:
        target.record(record.event(response.status_code, stream=False))
    if current_app.config["LOG_REQUESTS"]:
        fields = {
            "method": request.method,
            "route": request.url_rule.rule if request.url_rule else None,
            "path": request.path,
            "status": response.status_code,
            "stream": stream,
        }
        if stream:
            record.log_fields = fields
        else:
            record.log_line(fields)
    return response


def _error_code(response: Response) -> str | None:
    """Return the `code` of an OpenAI error body: what the client was told is what analytics count."""
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None
