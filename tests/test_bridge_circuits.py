"""A circuit per bridge: a dead session bridge pauses itself only; /providers/status and /health show each bridge."""

from __future__ import annotations

from app.errors import UpstreamError
from app.providers.breaker import Breaker
from app.store.breaker_state import FileState


def test_breaker_counts_a_request_once_and_saves_pending_successes(tmp_path):
    breaker = Breaker(FileState(str(tmp_path / "providers.json")), failures=2, cooldown=30, stats_interval=60)
    for _ in range(3):
        breaker.success("b", 10.0)  # the first is written; the other two wait for the stats interval
    breaker.failure("b", UpstreamError("down"))  # this request is a fourth: pending counts are saved with it
    breaker.success("b", 10.0, new_request=False)  # the same request, answering on its retry
    breaker.failure("b", UpstreamError("cut"), new_request=False)  # and failing after its stream started
    snapshot = breaker.snapshot("b")
    assert (snapshot["requests"], snapshot["errors"], snapshot["consecutive_failures"]) == (4, 2, 1)
    breaker.success("b", 10.0)
    breaker.success("b", 10.0)
    assert breaker.snapshot("b")["requests"] == 6  # a snapshot saves this process's pending count first
    assert breaker.names() == ["b"]
