"""The `bare-relay` target: a Flask relay with no gateway feature at all, the yardstick the gateway is held to.

It forwards POST /v1/chat/completions to the upstream through one pooled `requests.Session` and hands back what it
gets: the JSON body as it came, or for `"stream": true` each piece `iter_content(chunk_size=None)` yields, unparsed,
as `text/event-stream`. GET /v1/models passes through. No auth, no logging, no parsing of chunks. bench/servers.py
runs it under gunicorn exactly as the gateway (`BareRelay`); bench/README.md has its earlier reference figures.

    BARE_RELAY_UPSTREAM=http://127.0.0.1:PORT gunicorn --pythonpath bench 'bare_relay:app'
"""

from __future__ import annotations

import os

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

UPSTREAM = os.environ.get("BARE_RELAY_UPSTREAM", "http://127.0.0.1:8000").rstrip("/")
UPSTREAM_HEADERS = {"Authorization": f"Bearer {os.environ.get('BARE_RELAY_KEY', '')}"}
TIMEOUT = (5, 120)  # connect, read: bounded, far above anything the mock takes

session = requests.Session()
# One pool per process, as many kept-alive connections as gunicorn has threads (8; 16 leaves room).
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=16))
app = Flask(__name__)


def _passed(upstream: requests.Response) -> Response:
    return Response(upstream.content, upstream.status_code, content_type=upstream.headers.get("content-type"))


@app.get("/v1/models")
def models() -> Response:
    return _passed(session.get(UPSTREAM + "/v1/models", headers=UPSTREAM_HEADERS, timeout=TIMEOUT))


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_data()
    stream = bool((request.get_json(silent=True) or {}).get("stream"))
    headers = {**UPSTREAM_HEADERS, "Content-Type": "application/json"}
    url = UPSTREAM + "/v1/chat/completions"
    upstream = session.post(url, data=body, headers=headers, stream=stream, timeout=TIMEOUT)
    if not stream:
        return _passed(upstream)

    def pieces():
        with upstream:  # back to the pool when the stream ends or the client goes
            yield from upstream.iter_content(chunk_size=None)

    return Response(pieces(), upstream.status_code, content_type="text/event-stream")
