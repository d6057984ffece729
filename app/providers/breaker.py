"""Circuit breakers per provider, shared by every gateway process."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC
from typing import Any

from ..errors import GatewayError, StoreError
from ..store.base import isoformat, parse_time, utcnow

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Weight of the newest latency sample in the shared moving average.
EWMA = 0.3


class Breaker:
    """Open a circuit after `failures` consecutive failed requests; let one request at a time probe it.

    A probe is due after `cooldown`; a request that has nowhere else to go may claim it sooner (probe()), as long as
    no other request holds it.

    A circuit is named by its upstream's `Provider.breaker_key` (one per bridge URL). State lives in a shared
    record (FileState or RedisState), so all Passenger processes skip a dead upstream together. A healthy provider
    costs one cached read per request: records are written on failures and state changes, and otherwise at most
    every `stats_interval` seconds per process to refresh last success, latency and the request count (which
    therefore lags by up to that long per process; a failure or a snapshot saves this process's share at once).
    """

    def __init__(self, state, failures: int = 5, cooldown: float = 30.0, stats_interval: float = 5.0) -> None:
        self.state, self.failures, self.cooldown, self.stats_interval = state, failures, cooldown, stats_interval
        self._lock = threading.Lock()
        self._flushed: dict[str, float] = {}
        self._samples: dict[str, list[float]] = {}
        self._requests: dict[str, int] = {}  # successful requests not yet added to the shared count

    def allow(self, name: str) -> bool:
        """Return whether a request may go to the provider now (claiming the half-open probe if it is due)."""
        record = self._get(name)
        if record.get("state", CLOSED) == CLOSED:
            return True
        if not _probe_due(record, time.time()):
            return False
        return self._claim(name, early=False)

    def probe(self, name: str) -> bool:
        """Return whether a request may go now, claiming an open circuit's probe even before its cool-down ends.

        For a request with nowhere else to go: rather than refuse it for the whole cool-down, let it find out whether
        the upstream is back, one request at a time (False while another request holds the probe).
        """
        return self._claim(name, early=True)

    def _claim(self, name: str, early: bool) -> bool:
        now = time.time()

        def claim(current):
            state = current.get("state", CLOSED)
            free = _probe_due(current, now) or (early and state == OPEN)
            if state == CLOSED or not free:
                return None
            return {**current, "state": HALF_OPEN, "probe_until": now + self.cooldown}

        try:
            record, claimed = self.state.update(name, claim)
        except StoreError:
            return True  # cannot coordinate: let the request through rather than block the provider
        if claimed:
            log.info("circuit for %s half-open: probing with one request", name)
        return claimed or record.get("state", CLOSED) == CLOSED

    def success(self, name: str, latency_ms: float | None, new_request: bool = True) -> None:
        """Record that the provider answered: closes the circuit, and now and then refreshes the shared statistics.

        latency_ms is None for an answer that was an error not of the provider's making (lmarena.ai's, reported
        through a healthy bridge, or the request's own): proof it is up, but no latency sample. new_request is
        False when this request was already counted for name (it failed there first).
        """
        record = self._get(name)
        healthy = record.get("state", CLOSED) == CLOSED and not record.get("failures")
        with self._lock:
            samples = self._samples.setdefault(name, [])
            if latency_ms is not None:
                samples.append(latency_ms)
            self._requests[name] = self._requests.get(name, 0) + new_request
            now = time.monotonic()
            if healthy and now - self._flushed.get(name, 0.0) < self.stats_interval:
                return
            self._flushed[name] = now
            batch, self._samples[name] = samples, []
            requests = self._requests.pop(name, 0)
        stamp = isoformat(utcnow())

        def close(current):
            previous = current.get("latency_ms")
            latency = sum(batch) / len(batch) if batch else previous
            if batch and previous is not None:
                latency = EWMA * latency + (1 - EWMA) * previous
            return {
                **current,
                "state": CLOSED,
                "failures": 0,
                "requests": current.get("requests", 0) + requests,
                "last_success_at": stamp,
                "latency_ms": None if latency is None else round(latency, 1),
            }

        self._update(name, close)
        if not healthy:
            log.info("circuit for %s closed: it answered again", name)

    def failure(self, name: str, error: GatewayError, new_request: bool = True) -> None:
        """Record a failed request; open the circuit at the threshold, or at once when a probe failed.

        Call it once per request and circuit, however many attempts failed, and only for a failure the outcome table
        counts (docs/RELIABILITY.md); new_request is False when the request was already counted for name.
        """
        now, stamp = time.time(), isoformat(utcnow())
        with self._lock:
            requests = self._requests.pop(name, 0) + new_request  # the write happens anyway: save pending counts

        def fail(current):
            failures = int(current.get("failures", 0)) + 1
            record = {
                **current,
                "failures": failures,
                "requests": current.get("requests", 0) + requests,
                "errors": current.get("errors", 0) + 1,
                "last_failure_at": stamp,
                "last_error": {"code": error.code, "message": error.message[:300]},
            }
            if current.get("state") == HALF_OPEN or failures >= self.failures:
                if current.get("state") != OPEN:
                    log.warning("circuit for %s opened after %d failures (last: %s)", name, failures, error.code)
                record.update(state=OPEN, opened_at=now, retry_at=now + self.cooldown)
            return record

        self._update(name, fail)

    def snapshot(self, name: str) -> dict[str, Any]:
        """Return the shared record, as /providers/status shows it (saving this process's pending count first)."""
        with self._lock:
            requests = self._requests.pop(name, 0)
        if requests:
            self._update(name, lambda current: {**current, "requests": current.get("requests", 0) + requests})
        record = self._get(name)
        state = record.get("state", CLOSED)
        retry_at = record.get("retry_at") if state == OPEN else None
        paused_until = record.get("cooldown_until", 0)
        return {
            "state": state,
            "consecutive_failures": record.get("failures", 0),
            "retry_at": isoformat(_from_epoch(retry_at)) if retry_at else None,
            "cooldown_until": isoformat(_from_epoch(paused_until)) if paused_until > time.time() else None,
            "last_success_at": record.get("last_success_at"),
            "last_failure_at": record.get("last_failure_at"),
            "last_error": record.get("last_error"),
            "latency_ms": record.get("latency_ms"),
            "requests": record.get("requests", 0),
            "errors": record.get("errors", 0),
        }

    def names(self) -> list[str]:
        """Return the name of every circuit in the shared state, this process's or another's."""
        try:
            return self.state.names()
        except StoreError:
            return []

    def state_of(self, name: str) -> str:
        """Return the circuit's state: closed, open or half_open."""
        return self._get(name).get("state", CLOSED)

    def retry_in(self, name: str) -> float | None:
        """Return seconds until an open circuit surely admits a probe, or None when it is closed.

        Open: its cool-down's end. Half-open: the end of the probe's lease (the probe itself usually ends sooner).
        """
        record = self._get(name)
        state = record.get("state", CLOSED)
        if state == CLOSED:
            return None
        until = record.get("retry_at", 0) if state == OPEN else record.get("probe_until", 0)
        return max(0.0, until - time.time())

    def cool_down(self, name: str, seconds: float, error: GatewayError | None = None) -> None:
        """Pause a bridge (its browser tab) for seconds, noting why, in the circuit's record; the circuit is unchanged.

        The error becomes the record's last error, for the admin; it counts neither as a failure nor as an error.
        """
        until, stamp = time.time() + seconds, isoformat(utcnow())

        def pause(current):
            record = {**current, "cooldown_until": max(until, current.get("cooldown_until", 0))}
            if error is not None:
                record.update(last_failure_at=stamp, last_error={"code": error.code, "message": error.message[:300]})
            return record

        self._update(name, pause)

    def cooldown_left(self, name: str) -> float | None:
        """Return seconds until a bridge in cooldown returns, or None (one cached read, as allow())."""
        left = self._get(name).get("cooldown_until", 0) - time.time()
        return left if left > 0 else None

    def forget(self, names: list[str], idle_before: float, dry_run: bool = False) -> list[str]:
        """Remove (or, dry_run, only list) the records of names not active since idle_before (epoch seconds).

        Checked again under the record's lock (or Redis transaction): one that a request used meanwhile stays.
        """
        if dry_run:
            return [name for name in names if _last_active(self._get(name)) < idle_before]
        try:
            gone = self.state.remove(names, lambda record: _last_active(record) < idle_before)
        except StoreError as exc:
            log.warning("old circuit records not removed: %s", exc.message)
            return []
        with self._lock:
            for name in gone:
                self._flushed.pop(name, None)
                self._samples.pop(name, None)
        return gone

    def _get(self, name: str) -> dict[str, Any]:
        try:
            return self.state.get(name)
        except StoreError:
            return {}

    def _update(self, name: str, change) -> None:
        try:
            self.state.update(name, change)
        except StoreError as exc:
            log.warning("circuit state for %s not saved: %s", name, exc.message)


def _probe_due(record: dict[str, Any], now: float) -> bool:
    state = record.get("state", CLOSED)
    if state == OPEN:
        return now >= record.get("retry_at", 0)
    # A probe that never reported back (its process died) frees the slot when its lease ends.
    return state == HALF_OPEN and now >= record.get("probe_until", 0)


def _last_active(record: dict[str, Any]) -> float:
    """Return when a record last saw a request, a failure or a pause (epoch seconds; 0 when it says nothing)."""
    stamps = [parse_time(record[k]).timestamp() for k in ("last_success_at", "last_failure_at") if record.get(k)]
    stamps += [record.get(k) or 0 for k in ("opened_at", "retry_at", "probe_until", "cooldown_until")]
    return max(stamps, default=0.0)


def _from_epoch(seconds: float):
    from datetime import datetime

    return datetime.fromtimestamp(seconds, UTC)
