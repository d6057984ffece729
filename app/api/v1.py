"""The OpenAI-compatible /v1 API: client key required, each feature its own blueprint."""

from __future__ import annotations

from flask import Blueprint

from ..auth import CLIENT, Guard
from ..ratelimit import limit_client
from . import chat, images, models

bp = Blueprint("v1", __name__, url_prefix="/v1")
bp.before_request(Guard(CLIENT))
bp.before_request(limit_client)  # after the key check: only real keys are counted
bp.register_blueprint(chat.bp)
bp.register_blueprint(images.bp)
bp.register_blueprint(models.bp)
