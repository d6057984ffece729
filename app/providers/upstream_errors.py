"""What an upstream's failure means to a client: statuses, bodies and socket errors turned into GatewayErrors."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)


def connection_reason(exc: BaseException) -> str:
    """Return a short, key-free reason for a failed connection."""
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "getaddrinfo" in text or "nodename" in text:
        return "host name not found"
    if "reset" in text.lower():
        return "connection reset"
    return "connection failed"


def tls_reason(exc: BaseException) -> str:
    """Return why a TLS handshake failed, in OpenSSL's words where it gave some."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        # Hostname mismatches, expired and self-signed certificates all land here; OpenSSL's words say which.
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip(" ')\".")
        return f"its certificate is not trusted ({detail[:120]}); for a private CA set GATEWAY_UPSTREAM_CA_FILE"
    return "no protocol or cipher in common, or the server is not speaking TLS"


# Client messages name an upstream by its label, never its URL (a session's bridge URL is its owner's to know): the
# URL goes to the log, and to /providers/status for the admin.


def unreachable(label: str, public_url: str, exc: BaseException) -> UpstreamError:
    """Return the error for an upstream that could not be connected to."""
    reason = connection_reason(exc)
    log.info("%s at %s cannot be reached: %s", label, public_url, reason)
    return UpstreamError(f"{label} cannot be reached ({reason}). Is it running?", code="upstream_unreachable")


def tls_failed(label: str, public_url: str, exc: BaseException) -> UpstreamError:
    """Return the error for a TLS handshake that failed (not retried: the same certificate fails the same way)."""
    reason = tls_reason(exc)
    log.info("%s at %s failed the TLS handshake: %s", label, public_url, reason)
    return UpstreamError(f"{label} failed the TLS handshake: {reason}.", code="upstream_tls_failed", retryable=False)


def stream_broken(label: str, exc: BaseException) -> UpstreamError:
    """Return the error for a connection that broke before the answer was complete."""
    log.info("%s stream broke: %s", label, type(exc).__name__)
    return UpstreamError(
        f"{label} closed the connection before its answer was complete.", code="upstream_stream_broken"
    )


def too_large(label: str, what: str, limit: int) -> UpstreamError:
    """Return the error for an upstream answer (or one stream event) over the size cap."""
    log.info("%s sent %s over %d bytes", label, what, limit)
    return UpstreamError(
        f"{label} sent {what} larger than {limit} bytes (GATEWAY_MAX_UPSTREAM_BYTES).",
        code="upstream_response_too_large",
        retryable=False,  # the same question would most likely get the same answer again
    )


def upstream_message(body: Any) -> str:
    """Return the human text in an upstream error body (FastAPI detail or OpenAI error)."""
    if isinstance(body, dict):
        detail = body.get("detail")
        error = body.get("error")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return "; ".join(str(d.get("msg", d)) for d in detail[:3])
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        return json.dumps(body, ensure_ascii=False)[:300]
    return str(body)[:300]


def ensure_gateway_error(exc: BaseException, label: str) -> GatewayError:
    """Return exc if it is already a GatewayError, else a generic upstream error for it."""
    if isinstance(exc, GatewayError):
        return exc
    log.exception("unexpected error talking to %s", label)
    return UpstreamError(f"Unexpected failure while talking to {label}.")


def retry_after(headers: Any, cap: float = 300.0) -> float | None:
    """Return the Retry-After seconds of a response (numeric form), capped."""
    try:
        return min(max(float(headers.get("Retry-After")), 0.0), cap)
    except (TypeError, ValueError):
        return None


def status_error(label: str, status: int, said: str, headers: Any) -> GatewayError:
    """Translate an upstream HTTP error status the usual way; providers handle their own cases first."""
    if status in (401, 403):
        return UpstreamError(
            f"{label} rejected the gateway's API key (HTTP {status}).", code="upstream_auth_failed", retryable=False
        )
    if status == 429:
        return RateLimitError(f"{label} is rate-limiting requests ({said})", retry_after=retry_after(headers))
    if status == 404:
        return NotFoundError(f"{label}: {said}", param="model", code="model_not_found")
    if status == 413:
        return RequestTooLarge(f"{label}: {said}")
    if 400 <= status < 500:
        return InvalidRequestError(
            f"{label} rejected the request: {said}", status_code=400 if status == 422 else status
        )
    if status == 503:
        return UpstreamUnavailable(f"{label} is unavailable: {said}", retry_after=retry_after(headers))
    if status == 504:
        return UpstreamTimeout(f"{label} timed out: {said}")
    return UpstreamError(f"{label} failed with HTTP {status}: {said}")
