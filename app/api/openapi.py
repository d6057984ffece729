"""GET /openapi.json: the gateway's OpenAPI 3.1 description (app/openapi.json), pointed at this gateway."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, request

from ..errors import InvalidRequestError
from ..version import __version__
from .userscript import gateway_url

bp = Blueprint("openapi", __name__)

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi.json"


@cache
def document() -> dict[str, Any]:
    """Return app/openapi.json, read once per process."""
    with DOCUMENT.open(encoding="utf-8") as f:
        return json.load(f)


def server_url() -> str:
    """Return the URL clients reach this gateway at: GATEWAY_PUBLIC_URL, else this request's (sub-URI included)."""
    try:
        return gateway_url()
    except InvalidRequestError:
        # A Host header no URL can be made of: a relative server still resolves against wherever the client went.
        return request.script_root or "/"


@bp.get("/openapi.json")
def openapi():
    """Serve the OpenAPI description; it holds no secrets, so no key is needed."""
    spec = document()
    return {**spec, "info": {**spec["info"], "version": __version__}, "servers": [{"url": server_url()}]}
