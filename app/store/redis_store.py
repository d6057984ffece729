"""Sessions in Redis, for several gateway instances behind one front (APISIX)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from ..errors import StoreError
from . import redis_client
from .base import KEEPABLE, Session, SessionStore, isoformat, limit_error

log = logging.getLogger(__name__)

# Each session is a hash {record: JSON, created_at, last_seen_at}; each domain has a sorted set of names scored
# by last-seen time in ms, so "active" counts and age cleanup are range queries. Changes are Lua scripts: atomic.
_REGISTER = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not score) or tonumber(score) < tonumber(ARGV[4]) then
  if redis.call('ZCOUNT', KEYS[2], ARGV[4], '+inf') >= tonumber(ARGV[5]) then return -1 end
end
local new = redis.call('EXISTS', KEYS[1]) == 0
local record = ARGV[2]
if (not new) and (ARGV[8] ~= '' ) then
  local old = cjson.decode(redis.call('HGET', KEYS[1], 'record'))
  local merged = cjson.decode(record)
  for field in string.gmatch(ARGV[8], '[^,]+') do merged[field] = old[field] end
  -- as keep_stored in base.py: a kept bridge key is dropped when the bridge URL changes
  local keeps_key = string.find(',' .. ARGV[8] .. ',', ',bridge_api_key,', 1, true)
  if keeps_key and merged['bridge_base_url'] ~= old['bridge_base_url'] then
    merged['bridge_api_key'] = nil
  end
  record = cjson.encode(merged)
end
redis.call('HSET', KEYS[1], 'record', record, 'last_seen_at', ARGV[6])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[7])
if new then return 1 end
return 0
"""
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen_at', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""
_REMOVE_IF_STALE = """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) >= tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class RedisSessionStore(SessionStore):
    """The same interface as the JSON store; keys under `prefix`."""

    def __init__(self, url: str, prefix: str = "lmgw:", timeout: float = 5.0) -> None:
        import redis  # only deployments that choose Redis need the package

        self._errors = (redis.exceptions.RedisError, OSError)
        self.client = redis_client.connect(url, timeout)
        self.prefix = prefix
        self._register = self.client.register_script(_REGISTER)
        self._heartbeat = self.client.register_script(_HEARTBEAT)
        self._remove_if_stale = self.client.register_script(_REMOVE_IF_STALE)
        with self._guard():
            self.client.ping()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            log.error("redis session store failed: %s", type(exc).__name__)
            raise StoreError(f"The Redis session store is unavailable ({type(exc).__name__}).") from None

    def _keys(self, domain: str, name: str) -> list[str]:
        return [f"{self.prefix}session:{domain}:{name}", f"{self.prefix}seen:{domain}", f"{self.prefix}domains"]

    def _session(self, domain: str, name: str, fields: dict[str, str]) -> Session | None:
        if not fields.get("record"):
            return None
        record = json.loads(fields["record"])
        record.update(created_at=fields.get("created_at", ""), last_seen_at=fields.get("last_seen_at", ""))
        return Session.from_record(domain, name, record)

    def get(self, domain: str, name: str) -> Session | None:
        with self._guard():
            return self._session(domain, name, self.client.hgetall(self._keys(domain, name)[0]))

    def list(self, domain: str | None = None) -> list[Session]:
        with self._guard():
            domains = [domain] if domain else sorted(self.client.smembers(f"{self.prefix}domains"))
            wanted = [(d, n) for d in domains for n in sorted(self.client.zrange(f"{self.prefix}seen:{d}", 0, -1))]
            pipe = self.client.pipeline(transaction=False)
            for d, n in wanted:
                pipe.hgetall(self._keys(d, n)[0])
            found = zip(wanted, pipe.execute(), strict=True)
        return [s for (d, n), fields in found if (s := self._session(d, n, fields))]

    def register(
        self, session: Session, *, now: datetime, limit: int, active_since: datetime, keep: frozenset[str] = frozenset()
    ) -> tuple[Session, bool]:
        stamp = isoformat(now)
        session.updated_at = session.last_seen_at = stamp
        record = {k: v for k, v in session.record().items() if k not in ("created_at", "last_seen_at")}
        keys = self._keys(session.domain, session.session_name)
        args = [
            session.session_name,
            json.dumps(record, ensure_ascii=False),
            _ms(now),
            _ms(active_since),
            limit,
            stamp,
            session.domain,
            ",".join(sorted(keep & KEEPABLE)),
        ]
        with self._guard():
            outcome = self._register(keys=keys, args=args)
            if outcome == -1:
                raise limit_error(session.domain, limit, (now - active_since).total_seconds())
            stored = self.get(session.domain, session.session_name)
        return stored or session, outcome == 1

    def heartbeat(self, domain: str, name: str, *, now: datetime) -> Session | None:
        with self._guard():
            if not self._heartbeat(keys=self._keys(domain, name), args=[name, isoformat(now), _ms(now)]):
                return None
        return self.get(domain, name)

    def delete(self, domain: str, name: str) -> bool:
        key, seen, _ = self._keys(domain, name)
        with self._guard():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.zrem(seen, name)
            return bool(pipe.execute()[0])

    def cleanup(self, *, older_than: datetime, dry_run: bool = False) -> list[Session]:
        cutoff = _ms(older_than)
        removed = []
        with self._guard():
            for domain in sorted(self.client.smembers(f"{self.prefix}domains")):
                names = self.client.zrangebyscore(f"{self.prefix}seen:{domain}", "-inf", f"({cutoff}")
                for name in sorted(names):
                    session = self.get(domain, name)
                    # Removed only if still stale at this instant: a heartbeat in between keeps it.
                    if session and (
                        dry_run or self._remove_if_stale(keys=self._keys(domain, name), args=[name, cutoff])
                    ):
                        removed.append(session)
        return removed

    def describe(self) -> dict[str, Any]:
        # /health is how an operator (and a load balancer's log) learns Redis is gone: ask it, quietly, since
        # checks come every second or so and the failing requests already log.
        try:
            self.client.ping()
        except self._errors as exc:
            raise StoreError(f"The Redis session store is unavailable ({type(exc).__name__}).") from None
        return {"backend": "redis"}

    def close(self) -> None:
        self.client.close()
