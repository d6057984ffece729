"""Every credential check: client and admin keys, the dashboard cookie, cron and metrics tokens, registration tokens.

One guard style: each blueprint that needs a credential registers one `Guard(...)` with `bp.before_request`, naming
what its views need and which views differ. A guard only sees the request line and headers, so two checks run inside
the views that need them, through this module: a registration token covers one session, which the view learns from
the body or the link (`require_session`, `script_token`); and the pages that take the admin key in a form ask
`admin_key_ok` or `form_admin_key_ok`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable

from flask import Flask, current_app, request

from . import registration_tokens, signing_secrets
from .errors import AuthenticationError, PermissionDenied

CLIENT, ADMIN, DASHBOARD, CRON, METRICS = "client", "admin", "dashboard", "cron", "metrics"
# A view with nothing for its guard to check: it is public, or it checks a registration token or a form itself.
IN_VIEW = None

log = logging.getLogger(__name__)

COOKIE = "gateway_dashboard"
SECRET_FILE = "dashboard.secret"


def _digest(value: str) -> bytes:
    # Hashing first gives equal-length inputs to compare_digest, so neither key length nor non-ASCII leaks.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def key_matches(provided: str, keys: Iterable[str]) -> bool:
    """Return whether provided equals one of keys, looking at every key."""
    provided_digest = _digest(provided)
    found = False
    for key in keys:
        found |= hmac.compare_digest(provided_digest, _digest(key))
    return found


def provided_key() -> str:
    """Return the key from `Authorization: Bearer` or `X-API-Key`, or ''."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip()


def provided_admin_key() -> str:
    """Return the key from `X-Admin-Key`, else from `Authorization: Bearer`/`X-API-Key`, or ''."""
    return request.headers.get("X-Admin-Key", "").strip() or provided_key()


def require_client_key() -> None:
    """Reject a /v1 request without a valid client key, unless the gateway runs open."""
    keys = current_app.config["GATEWAY_API_KEYS"]
    if not keys:
        return
    key = provided_key()
    if not key:
        raise AuthenticationError("Missing API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    if not key_matches(key, keys):
        raise AuthenticationError("Incorrect API key provided.")


def require_admin() -> None:
    """Reject a management request without the admin key, when one is configured."""
    admin_key = current_app.config["GATEWAY_ADMIN_KEY"]
    if not admin_key:
        return
    key = provided_admin_key()
    if not key:
        raise AuthenticationError("This endpoint needs the admin key: 'Authorization: Bearer <GATEWAY_ADMIN_KEY>'.")
    if not key_matches(key, (admin_key,)):
        raise AuthenticationError("Incorrect admin key provided.")


def require_dashboard() -> None:
    """Reject a dashboard request without the admin key in a header or a signed-in cookie, when a key is set."""
    admin_key = current_app.config["GATEWAY_ADMIN_KEY"]
    if not admin_key:
        return
    given = provided_admin_key()
    # A key in a header decides alone: a wrong one is not rescued by a cookie.
    if key_matches(given, (admin_key,)) if given else _cookie_ok(request.cookies.get(COOKIE, "")):
        return
    raise AuthenticationError("Sign in to the dashboard with the admin key.")


def require_cron_token() -> None:
    """Reject a cron call without GATEWAY_CRON_TOKEN (X-Cron-Token, else ?token=); refuse all while it is unset."""
    token = current_app.config["GATEWAY_CRON_TOKEN"]
    if not token:
        raise PermissionDenied("Cron clean-up is disabled: set GATEWAY_CRON_TOKEN.", code="cron_disabled")
    header = request.headers.get("X-Cron-Token", "")
    given = header or request.args.get("token") or ""
    if not given or not key_matches(given, (token,)):
        raise AuthenticationError(
            "Missing or wrong cron token (send it as the X-Cron-Token header).", code="invalid_cron_token"
        )
    if not header:
        # Kept for cron hosts that cannot send headers; said at each call, so the admin learns where it went.
        log.warning(
            "the cron token came in the URL (?token=), which web servers and proxies write to their access logs: "
            "send it as the X-Cron-Token header, and change GATEWAY_CRON_TOKEN if those logs are shared"
        )


def require_metrics_token() -> None:
    """Reject a metrics scrape without GATEWAY_METRICS_TOKEN, when it is set."""
    token = current_app.config["GATEWAY_METRICS_TOKEN"]
    if token and not key_matches(provided_key(), (token,)):
        raise AuthenticationError("Missing or wrong metrics token ('Authorization: Bearer <GATEWAY_METRICS_TOKEN>').")


CHECKS = {
    CLIENT: require_client_key,
    ADMIN: require_admin,
    DASHBOARD: require_dashboard,
    CRON: require_cron_token,
    METRICS: require_metrics_token,
}


class Guard:
    """A blueprint's before_request check: `needs` of every view, except the views named in `views`."""

    def __init__(self, needs: str | None, **views: str | None) -> None:
        self.needs, self.views = needs, views

    def __call__(self) -> None:
        # A CORS preflight carries no credentials, and Flask answers OPTIONS without running the view.
        if request.method == "OPTIONS":
            return
        needs = self.views.get(request.endpoint.rpartition(".")[2], self.needs)
        if needs is not None:
            CHECKS[needs]()


def require_session(domain: str, name: str) -> registration_tokens.Scope | None:
    """Accept the admin key, or a userscript's registration token covering (domain, name); return the token's scope."""
    token = request.headers.get("X-Registration-Token", "").strip()
    if not token:
        require_admin()
        return None
    found = _token_scope(token, domain, name)
    if not current_app.config["GATEWAY_ADMIN_KEY"]:
        # Open mode takes anything; a good token still binds its session as the script's generator asked.
        return found if isinstance(found, registration_tokens.Scope) else None
    if isinstance(found, Exception):
        raise found
    return found


def _token_scope(token: str, domain: str, name: str) -> registration_tokens.Scope | Exception:
    """Return the scope of a token good for (domain, name) now, or the error that says why it is not."""
    secret = current_app.extensions["regtoken_secret"]
    found = registration_tokens.scope(secret, token)
    if found is None:
        return AuthenticationError(
            "Invalid registration token: generate the userscript again.", code="invalid_registration_token"
        )
    if not found.covers(domain, name):
        return PermissionDenied(f"This registration token does not cover session '{name}' on {domain}.")
    if registration_tokens.valid_scope(token) is None:
        return AuthenticationError(
            "This registration token has expired: generate the userscript again.", code="registration_token_expired"
        )
    if registration_tokens.revoked(found, domain, name):
        return AuthenticationError(
            "This registration token was revoked: generate the userscript again.", code="registration_token_revoked"
        )
    return found


def script_token(session_name: str, domains: Iterable[str]) -> str | None:
    """Return the script link's ?token= when it still covers the session on domains; None on an open gateway's link
    without one (anyone may generate there); raise otherwise."""
    token = request.args.get("token", "")
    if not token and not current_app.config["GATEWAY_ADMIN_KEY"]:
        return None
    # The update link re-serves the script with its own token and never mints another: a leaked link dies with its
    # token (expiry, revocation, or a new GATEWAY_USERSCRIPT_SECRET).
    for domain in sorted(set(domains)) or [""]:
        found = _token_scope(token, domain, session_name) if token else None
        if not isinstance(found, registration_tokens.Scope):
            raise AuthenticationError(
                "This script link is not valid any more (expired, revoked or from another secret): generate it "
                "again from /userscript/generate.",
                code="invalid_registration_token",
            )
    return token


def admin_key_ok(given: str) -> bool:
    """Return whether given (typed into a form, say) is the admin key; True when none is configured."""
    admin_key = current_app.config["GATEWAY_ADMIN_KEY"]
    return not admin_key or (bool(given) and key_matches(given, (admin_key,)))


def form_admin_key_ok() -> bool:
    """Return whether a page's form may act as admin: no key set, or it came in the admin_key field or a header."""
    return admin_key_ok(request.form.get("admin_key", "") or request.headers.get("X-Admin-Key", "") or provided_key())


def sign_cookie(secret: bytes, admin_key: str, expires: int) -> str:
    """Return a dashboard cookie good until expires, bound to the admin key and signed with secret."""
    # Changing the admin key or the secret signs every browser out.
    admin = hashlib.sha256(admin_key.encode("utf-8", "surrogatepass")).hexdigest()
    signature = hmac.new(secret, f"dashboard.{expires}.{admin}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{signature}"


def dashboard_cookie(expires: int) -> str:
    """Return the cookie that keeps a browser signed in to the dashboard until expires."""
    return sign_cookie(current_app.extensions["dashboard_secret"], current_app.config["GATEWAY_ADMIN_KEY"], expires)


def _cookie_ok(value: str) -> bool:
    expires, _, signature = value.partition(".")
    # isdigit() alone admits digits such as '²' that int() refuses, and int() refuses over 4,300 digits: a forged
    # cookie must not be a 500. Genuine ones carry a Unix time, 10 digits until the year 2286.
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12) or int(expires) < time.time():
        return False
    # compare_digest refuses non-ASCII text, and no genuine cookie has any.
    expected = dashboard_cookie(int(expires)).partition(".")[2]
    return signature.isascii() and hmac.compare_digest(signature, expected)


def init_app(app: Flask) -> None:
    """Load the dashboard's cookie secret: GATEWAY_DASHBOARD_SECRET, else one generated once into the storage folder."""
    app.extensions["dashboard_secret"] = signing_secrets.load(app, "GATEWAY_DASHBOARD_SECRET", SECRET_FILE)
