"""Threads kept for reuse, for work that must start at once and may run for minutes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Workers:
    """Threads that run one job at a time and then wait, idle, for the next; idle ones exit after idle_seconds.

    Reusing a thread saves its caller Thread.start(), which waits for the new thread, which then holds the GIL until
    it blocks: about 0.5 ms per stream. There is no cap: a job always starts at once, on an idle thread or a new one
    (streams run for minutes; queueing one behind another would stall it).
    """

    def __init__(self, name: str, idle_seconds: float = 60.0) -> None:
        self.name, self.idle_seconds = name, idle_seconds
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []

    def run(self, job: Callable[[], None]) -> None:
        """Run job on a worker thread now."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put(job)
            return
        inbox = queue.SimpleQueue()
        inbox.put(job)
        threading.Thread(target=self._work, args=(inbox,), name=self.name, daemon=True).start()

    def _work(self, inbox: queue.SimpleQueue) -> None:
        me = threading.current_thread()
        job = inbox.get()
        while True:
            me.name = self.name
            job()
            # Renamed while idle, so a count of threads named `name` is a count of jobs running.
            me.name = f"{self.name}-idle"
            with self._lock:
                self._idle.append(inbox)
            try:
                job = inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                job = inbox.get()  # run() took it off the idle list just now: its job is on the way
