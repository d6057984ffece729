"""What one process has yet to add to the fleet's analytics in Redis, merged as events come, sent in one go."""

from __future__ import annotations

import json
import math
from typing import Any

# Only a later script error replaces the stored one, whichever instance sends it first.
LAST_ERROR_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(cjson.decode(current)['ts']) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class Batch:
    """Counter increments (key -> field -> amount), latest times (sorted set -> member -> time) and each session's
    latest script error, at most `cap` counter fields; what did not fit is counted in `dropped`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counters: dict[str, dict[str, int]] = {}
        self.latest: dict[str, dict[str, float]] = {}
        self.errors: dict[str, tuple[float, str | None]] = {}  # session member -> (time, detail as stored)
        self.fields = 0
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self.counters or self.latest or self.errors)

    def incr(self, key: str, field: str, amount: int) -> None:
        """Add amount to a counter field, unless the batch is full and the field new."""
        fields = self.counters.get(key)
        if fields is None or field not in fields:
            if self.fields >= self.cap:
                self.dropped += 1
                return
            self.fields += 1
            fields = self.counters.setdefault(key, {})
            fields[field] = 0
        fields[field] += int(amount)

    def later(self, index: str, member: str, ts: float) -> None:
        """Keep the later of ts and the time already noted for member in a sorted set."""
        members = self.latest.setdefault(index, {})
        members[member] = max(ts, members.get(member, -math.inf))

    def error(self, member: str, ts: float, detail: str | None) -> None:
        """Keep a session's script error if it is its latest so far."""
        if ts >= self.errors.get(member, (-math.inf, None))[0]:
            self.errors[member] = (ts, detail)

    def merge(self, other: Batch) -> None:
        """Add another batch's contents to this one (sums, later times, latest errors); not its dropped count."""
        for key, fields in other.counters.items():
            for field, amount in fields.items():
                self.incr(key, field, amount)
        for index, members in other.latest.items():
            for member, ts in members.items():
                self.later(index, member, ts)
        for member, (ts, detail) in other.errors.items():
            self.error(member, ts, detail)

    def queue(self, pipe: Any, script: Any, prefix: str, expires, sets_expire: int, error_expire: int) -> None:
        """Queue the batch's commands on a pipeline; script is LAST_ERROR_SCRIPT registered on the client."""
        for key, fields in self.counters.items():
            for field, amount in fields.items():
                pipe.hincrby(key, field, amount)
            pipe.expireat(key, math.ceil(expires(key)))
        for index, members in self.latest.items():
            pipe.zadd(prefix + index, members, gt=True)
            pipe.expire(prefix + index, sets_expire)
        for member, (ts, detail) in self.errors.items():
            record = json.dumps({"ts": ts, "detail": _as_sent(detail)}, ensure_ascii=False)
            script([prefix + "e:" + member], [ts, record, error_expire], client=pipe)


def _as_sent(detail: str | None) -> Any:
    """Return an event's stored detail (JSON text, writer.event_row) as the script sent it, as queries.sessions does."""
    try:
        return None if detail is None else json.loads(detail)
    except ValueError:
        return detail
