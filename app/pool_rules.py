"""Pools of sessions: which pool a /v1 request names, its active members, which of them accept a model, their state."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app, request

from . import request_record
from .auth import provided_key
from .errors import NotFoundError
from .providers import get_router
from .providers.pools import Member
from .session_rules import active_since, bridge_of, check_domain, check_name, model_for
from .store import Session, get_store


def pool_target() -> tuple[str, str] | None:
    """Return the (domain, pool) serving a request that names no session, or None for the default routing.

    First match: X-Session-Pool (+ X-Target-Domain), the client key's GATEWAY_KEY_ROUTES, GATEWAY_DEFAULT_POOL.
    Pools are LMArena sessions: X-Provider yupp2api bypasses them.
    """
    if (request.headers.get("X-Provider") or "").strip().lower() == "yupp2api":
        return None
    config = current_app.config
    pool = request.headers.get("X-Session-Pool")
    if pool is not None:
        domain = request.headers.get("X-Target-Domain")
        domain = check_domain(domain, "X-Target-Domain") if domain else config["GATEWAY_SESSION_DOMAINS"][0]
        target = domain, check_name(pool, "X-Session-Pool")
    else:
        routes = config["GATEWAY_KEY_ROUTES"]
        target = (routes and routes.get(provided_key())) or config["GATEWAY_DEFAULT_POOL"]
    if target is not None:
        record = request_record.current()
        record.domain, record.pool = target
    return target


# How long one process reuses a pool's member list: a new member joins, or a silent one leaves, this much later.
MEMBERS_SECONDS = 1.0


def pool_members(domain: str, pool: str) -> list[Session]:
    """Return the active sessions of a pool, as listed at most MEMBERS_SECONDS ago in this process."""
    # perf: a listing reads the pool's sessions and their heartbeats (the whole domain, in Redis); once a second per
    # pool keeps that off the request path. Cooldowns are not cached here: the breaker reads them.
    cache = current_app.extensions.setdefault("pool_members", {})
    now = time.monotonic()
    cached = cache.get((domain, pool))
    if cached is not None and now < cached[0]:
        return cached[1]
    since = active_since()
    members = [s for s in get_store().pool(domain, pool) if s.seen_since(since)]
    cache[(domain, pool)] = (now + MEMBERS_SECONDS, members)
    return members


def pool_sends(domain: str, pool: str, model: str) -> list[Member]:
    """Return the pool's active members that accept model, each with the name it is sent and its body fields.

    A member's models map decides as for one session; a member without one accepts what its bridge lists (anything
    while that list is unknown), a GATEWAY_MODEL_ALIASES name by its target: as GET /v1/models lists them.
    :raise NotFoundError: 404 model_not_found when the pool has members and none accepts model.
    """
    sessions = pool_members(domain, pool)
    members = []
    for session in sessions:
        resolved = model_for(session, model)
        if resolved is None:
            continue  # never send a member a name its map does not hold
        if not session.models and resolved[0] not in (bridge_of(session).known_models() or {resolved[0]}):
            continue
        members.append(Member(session, *resolved))
    if sessions and not members:
        raise NotFoundError(
            f"The model '{model}' is served by no session of pool '{pool}' on {domain}; "
            "GET /v1/models with the same headers lists what it serves.",
            param="model",
            code="model_not_found",
        )
    return members


def pool_status() -> list[dict[str, Any]]:
    """Return every pool's registered sessions, each with its bridge's state (for the admin: URLs, never keys).

    Counts and the last error are the bridge's: sessions sharing one bridge show the same.
    """
    router = get_router()
    since = active_since()
    pools: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for session in get_store().list():
        if session.pool is None:
            continue
        url, key = router.circuit_of(session.bridge_base_url)
        circuit = router.breaker.snapshot(key)
        active = session.seen_since(since)
        pools.setdefault((session.domain, session.pool), []).append(
            {
                "session_name": session.session_name,
                "base_url": url,
                "active": active,
                "state": _member_state(active, circuit),
                "cooldown_until": circuit["cooldown_until"],
                "last_error": circuit["last_error"],
                "requests": circuit["requests"],
                "errors": circuit["errors"],
            }
        )
    return [
        {"domain": domain, "pool": pool, "members": sorted(members, key=lambda m: m["session_name"])}
        for (domain, pool), members in sorted(pools.items())
    ]


def _member_state(active: bool, circuit: dict[str, Any]) -> str:
    """Return whether a member is served requests now, or why not (the first reason that applies)."""
    if not active:
        return "inactive"  # no heartbeat within GATEWAY_SESSION_ACTIVE_SECONDS
    if circuit["cooldown_until"]:
        return "paused"
    return "ready" if circuit["state"] == "closed" else f"circuit_{circuit['state']}"
