"""/userscript: a page that generates the Tampermonkey script which registers LMArena sessions with this gateway."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, render_template, request, url_for

from .. import registration_tokens
from ..auth import form_admin_key_ok, script_token
from ..errors import AuthenticationError, InvalidRequestError
from ..security_headers import PAGE_HEADERS
from ..session_rules import check_base_url, check_bridge_key, check_domain, check_name, check_pool
from ..version import __version__

bp = Blueprint("userscript", __name__, url_prefix="/userscript")

HEARTBEAT_RANGE = (10, 3600)
MAX_ATTEMPTS = 6


@dataclass
class Binding:
    """Where a generated script's session is sent: baked into its token, the key kept on the server."""

    bridge_base_url: str | None = None
    pool: str | None = None
    bridge_api_key: str | None = field(default=None, repr=False)


def parse_binding(values) -> Binding:
    """Return the bridge URL, pool and key a generation form or query asks for; raise InvalidRequestError if bad."""
    if request.args.get("bridge_api_key"):
        # A key in the URL lands in access logs and browser history; the form posts it in the body.
        raise InvalidRequestError(
            "Send 'bridge_api_key' in a POST form body, never in the URL.", param="bridge_api_key"
        )
    binding = Binding(
        check_base_url(values.get("bridge_base_url")),
        check_pool(values.get("pool")),
        check_bridge_key(request.form.get("bridge_api_key")),
    )
    if binding.bridge_api_key and not binding.bridge_base_url:
        # A key belongs to one bridge; the default bridge has LMARENA_BRIDGE_API_KEY.
        raise InvalidRequestError("'bridge_api_key' needs 'bridge_base_url'.", param="bridge_api_key")
    return binding


@dataclass
class Options:
    """What a generated script is for and how it behaves."""

    session_name: str
    domains: list[str]
    heartbeat_seconds: int = 60
    debug: bool = False
    auto_retry: bool = True
    persist: bool = True

    def query(self) -> dict[str, str]:
        return {
            "domains": ",".join(self.domains),
            "heartbeat": str(self.heartbeat_seconds),
            "debug": str(int(self.debug)),
            "auto_retry": str(int(self.auto_retry)),
            "persist": str(int(self.persist)),
        }


def _flag(args, name: str, default: bool) -> bool:
    value = args.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "on", "yes")


def parse_options(args, session_name: str | None = None) -> Options:
    """Return the options in query or form fields; raise InvalidRequestError naming a bad one."""
    name = check_name(session_name if session_name is not None else args.get("session_name"))
    raw = [d for value in args.getlist("domains") for d in value.split(",") if d.strip()]
    domains = sorted({check_domain(d, "domains") for d in raw}) or [current_app.config["GATEWAY_SESSION_DOMAINS"][0]]
    try:
        heartbeat = int(args.get("heartbeat", 60))
    except ValueError:
        heartbeat = -1
    if not HEARTBEAT_RANGE[0] <= heartbeat <= HEARTBEAT_RANGE[1]:
        raise InvalidRequestError(
            f"'heartbeat' must be {HEARTBEAT_RANGE[0]}-{HEARTBEAT_RANGE[1]} seconds.", param="heartbeat"
        )
    return Options(
        name,
        domains,
        heartbeat,
        _flag(args, "debug", False),
        _flag(args, "auto_retry", True),
        _flag(args, "persist", True),
    )


def gateway_url() -> str:
    """Return the gateway's public base URL: GATEWAY_PUBLIC_URL, else this request's (sub-URI included)."""
    url = current_app.config["GATEWAY_PUBLIC_URL"] or request.url_root.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise InvalidRequestError("The request's Host header cannot form a gateway URL; set GATEWAY_PUBLIC_URL.")
    return url


def absolute(endpoint: str, **values: Any) -> str:
    """Return the public URL of an endpoint (url_for's path already holds any sub-URI, so do not add it twice)."""
    return gateway_url() + url_for(endpoint, **values)[len(request.script_root) :]


def render_script(options: Options, token: str) -> str:
    """Return the userscript for options, carrying token."""
    base = gateway_url()
    config: dict[str, Any] = {**asdict(options), "gateway_url": base, "token": token, "max_attempts": MAX_ATTEMPTS}
    return render_template(
        "userscript/lmarena.user.js",
        config=config,
        session_name=options.session_name,
        domains=options.domains,
        gateway_url=base,
        gateway_host=urlsplit(base).hostname,
        script_url=absolute("userscript.script", session_name=options.session_name, **options.query(), token=token),
        version=__version__,
    )


def _wants_script() -> bool:
    accept = request.accept_mimetypes
    return request.values.get("format") == "raw" or (
        accept.best_match(["text/html", "text/javascript", "application/javascript"])
        in ("text/javascript", "application/javascript")
    )


def _script_response(body: str, session_name: str) -> Response:
    return Response(
        body,
        mimetype="text/javascript",
        headers={
            "Content-Disposition": f'inline; filename="{session_name}.user.js"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _generate(advanced: bool):
    values = request.values
    page = {
        "advanced": advanced,
        "domains": current_app.config["GATEWAY_SESSION_DOMAINS"],
        "needs_key": bool(current_app.config["GATEWAY_ADMIN_KEY"]),
        "values": values,
    }
    if not values.get("session_name"):
        if _wants_script():
            raise InvalidRequestError("'session_name' is required.", param="session_name")
        return render_template("userscript/install.html", **page), 200, PAGE_HEADERS
    try:
        options = parse_options(values)
        binding = parse_binding(values)
    except InvalidRequestError as exc:
        if _wants_script():
            raise
        return render_template("userscript/install.html", **page, error=exc.message), 400, PAGE_HEADERS
    if not form_admin_key_ok():
        if _wants_script():
            raise AuthenticationError("Generating a userscript needs the admin key.")
        error = (
            "Enter the gateway's admin key to generate a script."
            if not values.get("admin_key")
            else "That admin key is not right."
        )
        return render_template("userscript/install.html", **page, error=error), 401, PAGE_HEADERS
    token, expires = registration_tokens.issue(options.session_name, options.domains, **asdict(binding))
    script = render_script(options, token)
    if _wants_script():
        return _script_response(script, options.session_name)
    install_url = url_for("userscript.script", session_name=options.session_name, **options.query(), token=token)
    return (
        render_template(
            "userscript/install.html",
            **page,
            options=options,
            binding=binding,
            expires=datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M UTC"),
            script=script,
            install_url=install_url,
        ),
        200,
        PAGE_HEADERS,
    )


@bp.route("/generate", methods=["GET", "POST"])
def generate():
    """Show the generator form; with a session name, the preview and the install link (or the script itself)."""
    return _generate(advanced=False)


@bp.route("/advanced-generate", methods=["GET", "POST"])
def advanced_generate():
    """The generator with heartbeat, debug, retry, domain and persistence options."""
    return _generate(advanced=True)


@bp.get("/<session_name>.user.js")
def script(session_name: str):
    """Serve the script Tampermonkey installs and later updates from, with the token its URL carries."""
    options = parse_options(request.args, session_name)
    token = script_token(options.session_name, options.domains)
    if token is None:
        token, _ = registration_tokens.issue(options.session_name, options.domains)
    return _script_response(render_script(options, token), options.session_name)
