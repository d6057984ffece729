"""What every HTML page the gateway serves shares: headers that keep it from loading or being framed elsewhere."""

from __future__ import annotations

# The pages need no script and load nothing from elsewhere (the gateway may run offline): inline styles and
# inline SVG only.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
