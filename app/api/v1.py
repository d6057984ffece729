"""The OpenAI-compatible /v1 API: client key required, each feature its own blueprint."""

from __future__ import annotations

from flask import Blueprint

from ..auth import CLIENT, Guard
from ..inflight import limit_in_flight, release_unless_streaming
from ..ratelimit import limit_client
from . import chat, images, models

bp = Blueprint("v1", __name__, url_prefix="/v1")
bp.before_request(Guard(CLIENT))
bp.before_request(limit_client)  # after the key check: only real keys are counted
bp.before_request(limit_in_flight)  # after the rate limit: a flood over its rate never reaches the shared slots
bp.teardown_request(release_unless_streaming)
bp.register_blueprint(chat.bp)
bp.register_blueprint(images.bp)
bp.register_blueprint(models.bp)
