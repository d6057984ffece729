"""/session: register, list, show, delete and heartbeat named LMArena sessions (admin key when configured)."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from .. import registration_tokens
from ..auth import ADMIN, IN_VIEW, Guard, require_session
from ..errors import NotFoundError, PermissionDenied
from ..session_rules import active_since, check_domain, check_name, parse_registration, to_api
from ..store import get_store
from ..store.base import KEEPABLE, Session, utcnow
from ..validation import read_json_body

bp = Blueprint("sessions", __name__, url_prefix="/session")
# A userscript registers and heartbeats with its token, which covers the session named in the body.
bp.before_request(Guard(ADMIN, register=IN_VIEW, heartbeat=IN_VIEW))

# A registration is a few hundred bytes; there is no reason to accept megabytes.
MAX_BODY = 64 * 1024


def _missing(domain: str, name: str) -> NotFoundError:
    return NotFoundError(f"No session '{name}' on {domain}.", param="session_name", code="session_not_found")


@bp.post("/register")
def register():
    """Create or update a session, marking it seen; 201 when new."""
    body = read_json_body(MAX_BODY)
    session = parse_registration(body)
    keep = KEEPABLE - body.keys()
    scope = require_session(session.domain, session.session_name)
    if scope is not None:
        keep = _apply_scope(session, body, scope)
    stored, created = get_store().register(
        session,
        now=utcnow(),
        limit=current_app.config["GATEWAY_CONCURRENT_SESSIONS_LIMIT"],
        active_since=active_since(),
        keep=keep,
    )
    return {"session": to_api(stored), "created": created}, 201 if created else 200


def _apply_scope(session: Session, body: dict, scope: registration_tokens.Scope) -> frozenset[str]:
    """Bind a token's session to the bridge and pool baked into it; return the fields left as stored.

    A token may report ids, and repeat what it carries; it cannot point the gateway at another bridge, change a key
    or a models map, or move the session to another pool (other clients' traffic would reach it).
    """
    carried = {"bridge_base_url": scope.bridge_base_url, "pool": scope.pool}
    for name in KEEPABLE & body.keys():
        if name not in carried or carried[name] is None or getattr(session, name) != carried[name]:
            raise PermissionDenied(
                "A registration token may not set bridge_base_url, bridge_api_key, models or pool beyond what its "
                "script was generated with; use the admin key.",
                param=name,
            )
    keep = set(KEEPABLE)
    for name, value in carried.items():
        if value is not None:
            setattr(session, name, value)
            keep.discard(name)
    if scope.key_ref is not None:
        session.bridge_api_key = registration_tokens.bridge_key(scope)
        keep.discard("bridge_api_key")
    return frozenset(keep)


@bp.post("/heartbeat")
def heartbeat():
    """Mark a session seen now, so it keeps counting as active."""
    body = read_json_body(MAX_BODY)
    domain, name = check_domain(body.get("domain")), check_name(body.get("session_name"))
    require_session(domain, name)
    session = get_store().heartbeat(domain, name, now=utcnow())
    if session is None:
        raise _missing(domain, name)
    return {"session": to_api(session)}


@bp.get("/list")
def list_sessions():
    """List sessions, of one domain with ?domain=."""
    domain = request.args.get("domain")
    sessions = get_store().list(check_domain(domain) if domain else None)
    return {"object": "list", "data": [to_api(s) for s in sessions], "count": len(sessions)}


@bp.get("/<domain>/<name>")
def show(domain: str, name: str):
    """Show one session."""
    domain, name = check_domain(domain), check_name(name)
    session = get_store().get(domain, name)
    if session is None:
        raise _missing(domain, name)
    return {"session": to_api(session)}


@bp.delete("/<domain>/<name>")
def delete(domain: str, name: str):
    """Delete one session."""
    domain, name = check_domain(domain), check_name(name)
    if not get_store().delete(domain, name):
        raise _missing(domain, name)
    return {"deleted": True, "domain": domain, "session_name": name}


@bp.post("/<domain>/<name>/revoke-tokens")
def revoke_tokens(domain: str, name: str):
    """Invalidate every registration token issued until now for one session (its scripts must be generated again)."""
    domain, name = check_domain(domain), check_name(name)
    cutoff = registration_tokens.revoke(domain, name)
    return {"revoked": True, "domain": domain, "session_name": name, "issued_before_ms": cutoff}
