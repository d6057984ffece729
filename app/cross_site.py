"""Refuse what another website can make a browser send: cross-site writes, and names rebound to this gateway.

A request that carries a credential header of its own (a client or admin key, a registration token) was not forged
by a page: a page cannot set those without a CORS preflight this gateway would refuse. Everything else — an open
gateway's requests, a dashboard cookie, the pages' forms — is checked here, before any blueprint's guard:

- an `Origin` other than the gateway's own (or one in CORS_ORIGINS) is refused (403);
- a management write with a body must be `application/json` (415), which a page cannot send cross-site without a
  preflight, or one of the pages' own forms carrying its CSRF token (403 without);
- with no admin key set, only loopback Host names and those of GATEWAY_PUBLIC_URL and GATEWAY_ALLOWED_HOSTS are
  answered (421): DNS rebinding makes an attacker's name point at 127.0.0.1, and the browser then treats the open
  gateway as that site's own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlsplit

from flask import Flask, after_this_request, current_app, g, request

from .errors import MisdirectedRequest, PermissionDenied, UnsupportedMediaType

CSRF_COOKIE = "gateway_csrf"
CSRF_FIELD = "csrf_token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CREDENTIAL_HEADERS = ("Authorization", "X-API-Key", "X-Admin-Key", "X-Registration-Token", "X-Cron-Token")
# The pages whose forms post back to the gateway; every other write takes JSON.
FORM_VIEWS = frozenset({"dashboard.login", "dashboard.logout", "userscript.generate", "userscript.advanced_generate"})


def init_app(app: Flask) -> None:
    """Check every request before the blueprints' guards; give templates `csrf_token()` for their forms."""
    app.before_request(check_request)
    app.jinja_env.globals["csrf_token"] = csrf_token


def check_request() -> None:
    """Refuse a rebound Host, a foreign Origin, or a write a page could have forged."""
    config = current_app.config
    if not config["GATEWAY_ADMIN_KEY"] and not host_allowed(request.host):
        raise MisdirectedRequest(
            "This gateway does not answer for the host name in this request: add it to GATEWAY_ALLOWED_HOSTS (or set "
            "GATEWAY_PUBLIC_URL) if it is yours. Setting GATEWAY_ADMIN_KEY also lifts this check."
        )
    if request.method not in UNSAFE or any(request.headers.get(h, "").strip() for h in CREDENTIAL_HEADERS):
        return
    if request.routing_exception is not None:
        return  # a 404 or 405 changes nothing, and says more than a refusal would
    origin = request.headers.get("Origin")
    # A page's own post, whatever its body: an empty POST to log out is a write too.
    form = request.endpoint in FORM_VIEWS
    if origin is not None and not origin_allowed(origin) and not (origin == "null" and form):
        # Referrer-Policy hides the origin of some pages' own posts ("null"): their CSRF token decides below.
        raise PermissionDenied(f"Requests from the web page at {origin[:100]!r} may not change this gateway.")
    if form:
        if not _csrf_ok() and not _keyed_form():
            raise PermissionDenied(
                "This form has expired or came from another site: reload the page and send it again.",
                code="csrf_failed",
            )
        return
    if _has_body() and request.mimetype != "application/json" and not request.path.startswith("/v1/"):
        raise UnsupportedMediaType("Send this request with 'Content-Type: application/json'.")


def host_allowed(host: str) -> bool:
    """Return whether an open gateway answers for this Host header."""
    name = urlsplit("//" + host).hostname if host else None
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    names = allowed_hosts()
    return "*" in names or name in names


def allowed_hosts() -> frozenset[str]:
    """Return the host names an open gateway answers for besides loopback ones."""
    config = current_app.config
    names = {h.lower() for h in config["GATEWAY_ALLOWED_HOSTS"]}
    public = urlsplit(config["GATEWAY_PUBLIC_URL"]).hostname if config["GATEWAY_PUBLIC_URL"] else None
    if public:
        names.add(public)
    return frozenset(names)


def origin_allowed(origin: str) -> bool:
    """Return whether a browser origin is this gateway's own or one CORS_ORIGINS lets in."""
    allowed = current_app.config["CORS_ORIGINS"]
    if "*" in allowed or origin in allowed:
        return True
    # Host and port only: behind a TLS-terminating proxy the gateway sees http while the browser says https.
    own = {request.host.lower()}
    if current_app.config["GATEWAY_PUBLIC_URL"]:
        own.add(urlsplit(current_app.config["GATEWAY_PUBLIC_URL"]).netloc.lower())
    return urlsplit(origin).netloc.lower() in own


def csrf_token() -> str:
    """Return the token a page's form carries, bound to this browser's CSRF cookie (set with this answer if new)."""
    nonce = getattr(g, "csrf_nonce", None)
    if nonce is None:
        nonce = _cookie_nonce()
        if nonce is None:
            nonce = secrets.token_urlsafe(24)
            secure = request.is_secure or current_app.config["GATEWAY_PUBLIC_URL"].startswith("https://")

            @after_this_request
            def _set(response):
                # SameSite=Strict: another site's form never carries it, even if it guessed the field.
                path = request.script_root or "/"
                response.set_cookie(CSRF_COOKIE, nonce, path=path, secure=secure, httponly=True, samesite="Strict")
                return response

        g.csrf_nonce = nonce
    return _sign(nonce)


def _csrf_ok() -> bool:
    nonce, given = _cookie_nonce(), request.form.get(CSRF_FIELD, "")
    # compare_digest refuses non-ASCII text, and no genuine token has any.
    return nonce is not None and given.isascii() and hmac.compare_digest(given, _sign(nonce))


def _keyed_form() -> bool:
    # A form that sends the admin key (checked by its view) proves what a CSRF token would: no other site has it.
    return bool(current_app.config["GATEWAY_ADMIN_KEY"] and request.form.get("admin_key", "").strip())


def _cookie_nonce() -> str | None:
    value = request.cookies.get(CSRF_COOKIE, "")
    plain = value.isascii() and value.replace("-", "").replace("_", "").isalnum()
    return value if plain and 16 <= len(value) <= 64 else None


def _sign(nonce: str) -> str:
    secret = current_app.extensions["dashboard_secret"]
    return hmac.new(secret, f"csrf.{nonce}".encode(), hashlib.sha256).hexdigest()


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
