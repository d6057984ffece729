"""Headers that keep browsers from misreading the gateway's answers, and HTML pages from loading or being framed."""

from __future__ import annotations

from flask import Flask, Response

# The pages need no script and load nothing from elsewhere (the gateway may run offline): inline styles and
# inline SVG only.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: the pages' own form posts then carry their real Origin, which is checked.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def init_app(app: Flask) -> None:
    """Send X-Content-Type-Options: nosniff with every answer, so no JSON or script is taken for HTML."""
    app.after_request(_nosniff)


def _nosniff(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
