"""One error hierarchy, rendered everywhere in OpenAI's error shape."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


# Statuses worth trying again (LiteLLM, OpenAI's SDK and Portkey agree on these).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status_code = 500
    type = "server_error"
    code: str | None = "internal_error"
    # True when lmarena.ai's failure came through the bridge ([LMArena Bridge Error]), not the bridge's own.
    from_lmarena = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.retry_after = retry_after
        self._retryable = retryable
        self.headers: dict[str, str] = {}  # extra response headers (rate limit state, say)

    @property
    def retryable(self) -> bool:
        """Whether the same provider may succeed if asked again shortly."""
        return self.status_code in RETRY_STATUSES if self._retryable is None else self._retryable

    @property
    def provider_fault(self) -> bool:
        """Whether the provider (not the request) failed: counts against its health, and another may be tried."""
        return self.status_code in RETRY_STATUSES or self.code == "upstream_auth_failed"

    @property
    def fallback(self) -> bool:
        """Whether another provider that serves the model should be tried."""
        return self.provider_fault or self.code == "model_not_found"

    def to_dict(self) -> dict:
        """Return the OpenAI error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(GatewayError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class RequestTooLarge(InvalidRequestError):
    status_code = 413
    code = "request_too_large"


class UnsupportedMediaType(InvalidRequestError):
    status_code = 415
    code = "unsupported_media_type"


class MisdirectedRequest(InvalidRequestError):
    status_code = 421
    code = "host_not_allowed"


class AuthenticationError(GatewayError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    type = "permission_error"
    code = "forbidden"


class NotFoundError(GatewayError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class RateLimitError(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class SessionLimitReached(RateLimitError):
    code = "session_limit_reached"


class TooManyInFlight(RateLimitError):
    code = "too_many_in_flight"


class StoreError(GatewayError):
    """The session store cannot be used right now; nothing was changed."""

    status_code = 503
    type = "api_error"
    code = "store_unavailable"


class StoreCorrupt(StoreError):
    code = "store_corrupt"


class AnalyticsError(StoreError):
    """The analytics database cannot be used right now."""

    code = "analytics_unavailable"


class UpstreamError(GatewayError):
    """An upstream answered, but not with something the gateway can pass on."""

    status_code = 502
    type = "api_error"
    code = "upstream_error"


class InvalidModelOutput(UpstreamError):
    """The model answered, but not as the request required (JSON, a schema, a tool call): never passed on as prose."""

    code = "invalid_model_output"

    @property
    def provider_fault(self) -> bool:
        # The upstream works: its model did not follow the instruction. No breaker counts it, no fallback follows.
        return False


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


# Routing and header errors raised by werkzeug that have no class of their own, described the OpenAI way.
_HTTP_CODES = {
    400: "invalid_request",
    405: "method_not_allowed",
    415: "unsupported_media_type",
    431: "request_header_fields_too_large",
}


def error_response(error: GatewayError):
    """Return a Flask response tuple for a GatewayError."""
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if error.status_code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="lmarena-gateway"'
    return error.to_dict(), error.status_code, headers


def _api_endpoints() -> list[str]:
    """Return the app's fixed /v1 paths, read from its routes so the 404 message cannot go stale."""
    return sorted({r.rule for r in current_app.url_map.iter_rules() if r.rule.startswith("/v1/") and not r.arguments})


def _unknown_endpoint() -> NotFoundError:
    paths = _api_endpoints()
    if not paths:
        return NotFoundError("Unknown endpoint.")
    listed = paths[0] if len(paths) == 1 else f"{', '.join(paths[:-1])} and {paths[-1]}"
    return NotFoundError(f"Unknown endpoint. The gateway serves {listed}.")


def _from_http_exception(exc: HTTPException) -> GatewayError:
    status = exc.code or 500
    if status == 404:
        return _unknown_endpoint()
    if status == 413:
        return RequestTooLarge("Request body is too large.")
    if status == 405:
        message = f"Method not allowed for this endpoint (allowed: {', '.join(exc.valid_methods or [])})."
    else:
        message = exc.description or exc.name
    cls = InvalidRequestError if status < 500 else GatewayError
    return cls(message, code=_HTTP_CODES.get(status, "http_error"), status_code=status)


def register_errorhandlers(app: Flask) -> None:
    """Render every error, routing ones included, as an OpenAI error body."""

    @app.errorhandler(GatewayError)
    def handle_gateway_error(error: GatewayError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        response = error_response(_from_http_exception(exc))
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response[2]["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        # Imported here: request_record needs analytics, whose modules need these error classes.
        from .request_record import current

        request_id = current().request_id
        log.exception("unhandled error in request %s", request_id)
        return error_response(
            GatewayError(f"The gateway hit an internal error (request id {request_id}); see the gateway log.")
        )
