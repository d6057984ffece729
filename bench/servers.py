"""The processes under test: the mock upstream, the gateway under waitress and gunicorn, and the bare relay."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from clients import Endpoint, pinned
from net import free_port, get, post_json, wait_ready
from procs import children, tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BRIDGE_KEY = "sk-bench-bridge"
CLIENT_KEY = "sk-bench-client"
ADMIN_KEY = "sk-bench-admin"
# Settings of the caller's shell must not change what is measured; these prefixes are the gateway's own.
OWN_PREFIXES = ("GATEWAY_", "LMARENA_", "YUPP2API_", "SESSION_STORE", "STORAGE_PATH", "REDIS_URL", "CORS_", "LOG_")


def clean_environ() -> dict[str, str]:
    """Return this process's environment without any gateway setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}


def gateway_settings(mock_port: int) -> dict[str, str]:
    """Return the gateway's settings with every feature on: client keys, analytics, rate and in-flight limits (never
    reached)."""
    return {
        "GATEWAY_ENV_FILE": "",  # no .env: only what is written here
        "LMARENA_BRIDGE_BASE_URL": f"http://127.0.0.1:{mock_port}",
        "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
        "GATEWAY_API_KEYS": CLIENT_KEY,
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000000",
        # One key sends every request, up to 32 at once: above the default of 8, counted but never refused.
        "GATEWAY_MAX_IN_FLIGHT_PER_KEY": "100000",
        "GATEWAY_ENABLE_SESSION_ANALYTICS": "true",
        "SESSION_STORE": "json",
        "GATEWAY_CONCURRENT_SESSIONS_LIMIT": "100000",
    }


class Server:
    """A target the load goes to: how to reach it, which processes are its, how to start and stop it."""

    name = "server"
    label = "server"
    key = CLIENT_KEY

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.unavailable: str | None = None
        self.log_path: Path | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.port, self.key)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environ(self) -> dict[str, str]:
        return clean_environ()

    def ready_path(self) -> str:
        return "/health"

    def start(self, workdir: Path, cpus: set[int] | None = None, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers."""
        self.spawn(workdir, cpus)
        self.wait(timeout)

    def spawn(self, workdir: Path, cpus: set[int] | None = None) -> None:
        """Start the process in its own session (so its whole group can be stopped); do not wait."""
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=self.environ(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pinned(cpus),
            )

    def wait(self, timeout: float) -> None:
        """Wait until the spawned server answers its ready path; raise RuntimeError with its log's end if not."""
        try:
            wait_ready(self.port, self.ready_path(), timeout, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.label}: {exc}\n{self.log_tail()}") from None

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError, TypeError):
            return self.log_path.read_text(errors="replace")[-size:]
        return ""

    def all_pids(self) -> list[int]:
        """Every process serving requests (CPU is counted over these)."""
        return tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def worker_pids(self) -> list[int]:
        """The processes that run the application (peak RSS is reported per one of these)."""
        return self.all_pids()

    def stop(self) -> None:
        """SIGTERM the process group this server started; SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class Mock(Server):
    name = "mock"
    label = "mock LMArenaBridge (asyncio, 1 process)"
    key = BRIDGE_KEY

    def __init__(self, procs: int = 1, long_chunks: int = 300, long_gap: float = 0.1) -> None:
        super().__init__()
        self.procs, self.long_chunks, self.long_gap = procs, long_chunks, long_gap
        self.label = f"mock LMArenaBridge (asyncio, {procs} process{'es' if procs > 1 else ''})"

    def command(self) -> list[str]:
        return [
            sys.executable,
            str(HERE / "mock_upstream.py"),
            "--port",
            str(self.port),
            "--procs",
            str(self.procs),
            "--long-chunks",
            str(self.long_chunks),
            "--long-gap",
            str(self.long_gap),
        ]

    def ready_path(self) -> str:
        return "/v1/models"

    def stats(self) -> dict | None:
        """Return the mock's connection and request counts (one process only: each process counts its own)."""
        if self.procs != 1:
            return None
        try:
            return json.loads(get(self.port, "/bench/stats")[1])
        except (OSError, ValueError):
            return None


class Direct(Server):
    """The mock itself, called without anything in between (shares the mock's process)."""

    name = "direct"
    label = "direct to mock (no relay)"
    key = BRIDGE_KEY

    def __init__(self, mock: Mock) -> None:
        super().__init__()
        self.mock = mock

    def start(self, workdir: Path, cpus: set[int] | None = None, timeout: float = 60.0) -> None:
        self.port = self.mock.port

    def all_pids(self) -> list[int]:
        return self.mock.all_pids()

    def stop(self) -> None:
        pass


class Gateway(Server):
    """The gateway as a local process, its storage in its own folder."""

    def __init__(self, mock_port: int, storage: Path) -> None:
        super().__init__()
        self.mock_port, self.storage = mock_port, storage

    def environ(self) -> dict[str, str]:
        return {
            **clean_environ(),
            **gateway_settings(self.mock_port),
            "STORAGE_PATH": str(self.storage / "sessions.json"),
            "GATEWAY_ANALYTICS_PATH": str(self.storage / "analytics.sqlite3"),
        }


class Waitress(Gateway):
    """`python -m app`, as `make run` serves it: waitress with GATEWAY_THREADS threads (its default unless given)."""

    name = "gw-waitress"

    def __init__(self, mock_port: int, storage: Path, threads: int | None = None, name: str | None = None) -> None:
        super().__init__(mock_port, storage)
        self.threads = threads
        self.name = name or self.name
        shown = f"{threads} threads" if threads else "GATEWAY_THREADS threads (the default)"
        self.label = f"gateway · waitress, 1 process × {shown} (`python -m app`, `make run`)"

    def environ(self) -> dict[str, str]:
        threads = {"GATEWAY_THREADS": str(self.threads)} if self.threads else {}
        return {**super().environ(), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port), **threads}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "app"]


class Gunicorn(Gateway):
    name = "gw-gunicorn"
    workers, threads = 2, 8
    label = f"gateway · gunicorn gthread {workers}×{threads} --reuse-port"
    wsgi = ["app:create_app()"]

    @staticmethod
    def binary() -> Path:
        return Path(sys.executable).parent / "gunicorn"

    def server_options(self) -> list[str]:
        return ["--worker-class", "gthread", "--workers", str(self.workers), "--threads", str(self.threads)]

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            # Only what is on this line, not the repository's gunicorn.conf.py (gevent), which gunicorn reads itself.
            "--config",
            os.devnull,
            *self.server_options(),
            "--reuse-port",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--keep-alive",
            "5",
            "--log-level",
            "warning",
            *self.wsgi,
        ]

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid) if self.proc and self.proc.poll() is None else []


class GunicornThreads(Gunicorn):
    """A candidate for many long streams: gunicorn gthread with as many threads as streams to hold."""

    def __init__(self, mock_port: int, storage: Path, workers: int, threads: int) -> None:
        super().__init__(mock_port, storage)
        self.workers, self.threads = workers, threads
        self.name = f"gw-gthread-{workers}x{threads}"
        self.label = f"gateway · gunicorn gthread {workers}×{threads} --reuse-port"


class GunicornGevent(Gunicorn):
    """The recommended server as `make serve` runs it: gunicorn with the repository's gunicorn.conf.py (gevent)."""

    name = "gw-gevent"

    def __init__(self, mock_port: int, storage: Path, workers: int | None = None) -> None:
        super().__init__(mock_port, storage)
        self.workers = workers
        sizes = f"{workers} workers" if workers else "a worker per core"
        self.label = f"gateway · gunicorn gevent, {sizes} (`make serve`, gunicorn.conf.py)"

    def command(self) -> list[str]:
        workers = ["--workers", str(self.workers)] if self.workers else []
        return [
            str(self.binary()),
            "--config",
            str(REPO / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            *workers,
        ]


class BareRelay(Gunicorn):
    """bench/bare_relay.py under the same gunicorn as the gateway: what a relay with no feature at all costs."""

    name = "bare-relay"
    label = f"bare Flask relay · gunicorn gthread {Gunicorn.workers}×{Gunicorn.threads} --reuse-port"
    key = "unused"  # sent, never checked
    wsgi = ["--pythonpath", str(HERE), "bare_relay:app"]

    def __init__(self, mock_port: int) -> None:
        Server.__init__(self)
        self.mock_port = mock_port

    def environ(self) -> dict[str, str]:
        upstream = f"http://127.0.0.1:{self.mock_port}"
        return {**clean_environ(), "BARE_RELAY_UPSTREAM": upstream, "BARE_RELAY_KEY": BRIDGE_KEY}

    def ready_path(self) -> str:
        return "/v1/models"


class BareGevent(BareRelay):
    """The bare relay under gevent workers, as the recommended server runs the gateway (its "× bare" yardstick)."""

    name = "bare-gevent"
    workers = 2
    label = f"bare Flask relay · gunicorn gevent {workers} workers × 1000 connections --reuse-port"

    def server_options(self) -> list[str]:
        return ["--worker-class", "gevent", "--workers", str(self.workers), "--worker-connections", "1000"]


class WithSession(Server):
    """Another server's gateway, asked with `X-Session-Name` (a session lookup in the JSON store per request)."""

    def __init__(self, inner: Gateway, session: str) -> None:
        super().__init__()
        self.inner, self.session = inner, session
        self.name = f"{inner.name}+session"
        self.label = f"{inner.label}, with X-Session-Name"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.inner.port, CLIENT_KEY, header=f"X-Session-Name: {self.session}")

    def start(self, workdir: Path, cpus: set[int] | None = None, timeout: float = 60.0) -> None:
        """Register the session through the API with the admin key (the store already holds 10,000 others)."""
        self.port = self.inner.port
        body = {
            "domain": "lmarena.ai",
            "session_name": self.session,
            "session_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "message_id": "4fa85f64-5717-4562-b3fc-2c963f66afa7",
        }
        status, answer = post_json(self.port, "/session/register", body, {"Authorization": f"Bearer {ADMIN_KEY}"})
        if status not in (200, 201):
            raise RuntimeError(f"session registration answered {status}: {answer[:300]!r}")

    def all_pids(self) -> list[int]:
        return self.inner.all_pids()

    def worker_pids(self) -> list[int]:
        return self.inner.worker_pids()

    def stop(self) -> None:
        pass
