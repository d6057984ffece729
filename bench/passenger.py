"""The gateway as cPanel deploys it: a private Apache + mod_passenger on loopback (tests/deploy/apache.py's harness)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from net import get
from procs import tree
from servers import REPO, Server, gateway_settings

# Work-tree files the harness's git-tracked snapshot would miss while they are new (not yet committed).
SERVED = ("app", "templates", "passenger_wsgi.py", "requirements.txt")


def untracked(source: Path = REPO) -> list[str]:
    """Return new, not ignored files of the served code (git ls-files --others --exclude-standard)."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "--others", "--exclude-standard", "--", *SERVED],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (source / name).is_file()]


def own_affinity(cpus: set[int] | None):
    """Return a context manager that runs its block pinned to cpus (Apache and Passenger inherit it), or nothing."""

    @contextlib.contextmanager
    def pin():
        before = os.sched_getaffinity(0)
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    return pin()


class Passenger(Server):
    """One Site with PassengerMaxPoolSize = pool; Passenger runs one request per process, so pool >= concurrency."""

    name = "gw-passenger"

    def __init__(self, mock_port: int, pool: int, pip_cache: Path) -> None:
        super().__init__()
        self.mock_port, self.pool, self.pip_cache = mock_port, pool, pip_cache
        self.label = f"gateway · Apache 2.4 + mod_passenger, pool {pool} (1 request per process)"
        self.deployment = None
        self.site = None
        self.added: list[str] = []

    def start(self, workdir: Path, cpus: set[int] | None = None, timeout: float = 120.0) -> None:
        """Build the app user's Python 3.11 venv (pip cache under bench/.cache) and start Apache."""
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.deploy.apache import Deployment, missing_tools

        missing = missing_tools()
        if missing:
            raise RuntimeError(f"needs Debian packages {' '.join(missing)} (tests/helpers/install-system-deps.sh)")
        self.pip_cache.mkdir(parents=True, exist_ok=True)
        with own_affinity(cpus):
            self.deployment = Deployment(self.pip_cache)
            # Measure the work tree as it is, like the other servers: add files that are new and not committed yet.
            self.added = untracked()
            for name in self.added:
                target = self.deployment.source / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, target)
            self.site = self.deployment.site(env=gateway_settings(self.mock_port), pool_size=self.pool)
            self.site.start(timeout=timeout)
        self.port = self.site.port

    def log_tail(self, size: int = 3000) -> str:
        if self.site is None:
            return ""
        return (self.site.error_log()[-size:] + "\n" + self.site.passenger_log()[-size:]).strip()

    def all_pids(self) -> list[int]:
        """Apache's processes, Passenger's watchdog and core, and the app's processes."""
        if self.site is None:
            return []
        pids = set(self.site.app_pids())
        apache = self.site._read_pid()
        for root in ([apache] if apache else []) + self.site.passenger_pids():
            pids.update(tree(root))
        return sorted(pids)

    def worker_pids(self) -> list[int]:
        return self.site.app_pids() if self.site is not None else []

    def app_processes(self) -> int:
        return len(self.worker_pids())

    def healthy(self) -> bool:
        with contextlib.suppress(OSError):
            return get(self.port, "/health", timeout=30)[0] == 200
        return False

    def stop(self) -> None:
        if self.deployment is not None:
            self.deployment.remove()  # stops its Site and deletes the work folder
            self.deployment = None
