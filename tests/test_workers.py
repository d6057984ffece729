"""Reused worker threads: a job starts at once, idle threads are reused, then exit."""

from __future__ import annotations

import threading

from app.workers import Workers
from tests.upstreams.httpserver import wait_until


def named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_an_idle_thread_runs_the_next_job():
    workers = Workers("test-reuse", idle_seconds=5)
    ran: list[int] = []
    done = threading.Event()
    workers.run(lambda: (ran.append(threading.get_ident()), done.set()))
    assert done.wait(2)
    assert wait_until(lambda: named("test-reuse-idle"), 2), "the thread did not go idle"
    done.clear()
    workers.run(lambda: (ran.append(threading.get_ident()), done.set()))
    assert done.wait(2)
    assert len(ran) == 2 and ran[0] == ran[1]


def test_a_job_never_waits_for_a_busy_one():
    workers = Workers("test-busy", idle_seconds=5)
    release, second_ran = threading.Event(), threading.Event()
    workers.run(lambda: release.wait(5))
    workers.run(second_ran.set)
    try:
        assert second_ran.wait(2), "the second job queued behind the first"
        assert wait_until(lambda: len(named("test-busy")) == 1 and len(named("test-busy-idle")) == 1, 2)
    finally:
        release.set()


def test_idle_threads_exit_after_idle_seconds_and_new_jobs_still_run():
    workers = Workers("test-expiry", idle_seconds=0.1)
    done = threading.Event()
    workers.run(done.set)
    assert done.wait(2)
    assert wait_until(lambda: not named("test-expiry") and not named("test-expiry-idle"), 3)
    done.clear()
    workers.run(done.set)
    assert done.wait(2)


def test_many_jobs_at_once_all_run_each_on_its_own_thread():
    workers = Workers("test-many", idle_seconds=5)
    barrier = threading.Barrier(20, timeout=5)
    finished = []
    for _ in range(20):
        # Each waits for all the others: only twenty threads running at once can pass.
        workers.run(lambda: finished.append(barrier.wait()))
    assert wait_until(lambda: len(finished) == 20, 5), len(finished)
    assert wait_until(lambda: len(named("test-many-idle")) == 20, 2)
