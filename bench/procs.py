"""What server processes cost: CPU seconds and memory (peak RSS per process, PSS in total) read from /proc."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Return pid's direct children (Linux 3.5+ lists them per thread; the main thread's list is enough here)."""
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def tree(pid: int) -> list[int]:
    """Return pid and all its descendants (bounded walk)."""
    found, todo = [], [pid]
    while todo and len(found) < 4096:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """Return user+system CPU seconds of each live pid."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def status_kib(pid: int, field: str) -> int | None:
    """Return a kB field of /proc/<pid>/status (VmRSS, VmHWM), or None."""
    with contextlib.suppress(OSError):
        found = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        return int(found.group(1)) if found else None
    return None


def pss_kib(pid: int) -> int | None:
    """Return the proportional set size (shared pages split between sharers), or None."""
    with contextlib.suppress(OSError):
        found = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        return int(found.group(1)) if found else None
    return None


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """Return CPU seconds spent between two snapshots by processes alive at the end (new ones count whole)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


class MemoryWatch:
    """Sample a server's processes every `interval` s: peak RSS per process, peak total PSS, process count."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5) -> None:
        self.pids, self.interval = pids, interval
        self.peak_rss_kib: dict[int, int] = {}
        self.peak_pss_total_kib = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-watch", daemon=True)

    def start(self) -> MemoryWatch:
        self._thread.start()
        return self

    def sample(self) -> None:
        pids = self.pids()
        pss = 0
        for pid in pids:
            # VmHWM is the process's own lifetime peak, start-up included: what the kernel had to find for it.
            peak = status_kib(pid, "VmHWM") or status_kib(pid, "VmRSS") or 0
            self.peak_rss_kib[pid] = max(self.peak_rss_kib.get(pid, 0), peak)
            pss += pss_kib(pid) or 0
        self.peak_pss_total_kib = max(self.peak_pss_total_kib, pss)
        self.max_processes = max(self.max_processes, len(pids))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        """Stop sampling and return the figures in MiB."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.sample()
        peaks = sorted(self.peak_rss_kib.values())
        return {
            "peak_rss_per_process_mib": round(peaks[-1] / 1024, 1) if peaks else None,
            "median_peak_rss_mib": round(peaks[len(peaks) // 2] / 1024, 1) if peaks else None,
            "processes": self.max_processes,
            "peak_pss_total_mib": round(self.peak_pss_total_kib / 1024, 1),
        }


class TotalMemory:
    """Sample a server's processes every `interval` s: the peak of their summed RSS and of their summed PSS, and the
    largest RSS of one process (what each more process costs, for a server that adds processes)."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5) -> None:
        self.pids, self.interval = pids, interval
        self.peak_rss_kib = self.peak_pss_kib = self.peak_one_kib = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="total-memory", daemon=True)

    def start(self) -> TotalMemory:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        pids = self.pids()
        rss = [status_kib(pid, "VmRSS") or 0 for pid in pids]
        self.peak_rss_kib = max(self.peak_rss_kib, sum(rss))
        self.peak_one_kib = max([self.peak_one_kib, *rss])
        self.peak_pss_kib = max(self.peak_pss_kib, sum(pss_kib(pid) or 0 for pid in pids))
        self.max_processes = max(self.max_processes, len(pids))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        """Stop sampling and return the figures in MiB."""
        self._stop.set()
        self._thread.join(timeout=5)
        return {
            "rss_total_mib": round(self.peak_rss_kib / 1024, 1),
            "pss_total_mib": round(self.peak_pss_kib / 1024, 1),
            "rss_largest_process_mib": round(self.peak_one_kib / 1024, 1),
            "processes": self.max_processes,
        }
