"""Deploy the gateway the way cPanel's "Setup Python App" does: a private Apache + mod_passenger on loopback.

`Deployment` is made once per test session: an unprivileged app user, a work folder every parent of which that
user can traverse, and a Python 3.11 virtualenv with requirements.txt (Passenger 6.0.17's WSGI loader imports
`imp`, gone in 3.12). `Site` is one Apache serving one copy of the project (its git-tracked files) from an app root
owned by that user, configured with the block cPanel writes (PassengerAppRoot, PassengerBaseURI, PassengerPython,
SetEnv ...) and cPanel's "Compress all content" (`SetOutputFilter DEFLATE`). The system's apache2 service and
/etc/apache2 are never touched: only Debian's module .load/.conf files are read.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import requests

REPO = Path(__file__).resolve().parents[2]
APACHE = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
PASSENGER_LOAD = Path("/etc/apache2/mods-available/passenger.load")
PASSENGER_CONF = Path("/etc/apache2/mods-available/passenger.conf")
PASSENGER_STATUS = "/usr/sbin/passenger-status"
PYTHON = "/usr/bin/python3.11"
APP_USER = "gwtest"
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The lines the project tells cPanel users to add to the app folder's .htaccess (cpanel/CPANEL_SETUP.md).
HTACCESS = Path("cpanel") / "htaccess"
# Loaded from Debian's module folder; mod_passenger comes through Debian's own passenger.load/.conf (read only).
APACHE_MODULES = ("mpm_event", "authz_core", "dir", "mime", "env", "setenvif", "filter", "deflate", "headers")


def missing_tools() -> list[str]:
    """Return what this machine lacks to deploy (run tests/helpers/install-system-deps.sh as root to get it)."""
    needed = {
        APACHE: "apache2",
        str(MODULES / "mod_passenger.so"): "libapache2-mod-passenger",
        str(PASSENGER_CONF): "libapache2-mod-passenger",
        PYTHON: "python3.11",
        "/usr/lib/python3.11/ensurepip/__init__.py": "python3.11-venv",
    }
    return sorted({package for path, package in needed.items() if not os.path.exists(path)})


def run(args: list[str], *, timeout: float, env: Mapping[str, str] | None = None, **kwargs) -> str:
    """Run a command to completion; raise with its output when it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


@dataclass(frozen=True)
class AppUser:
    """Who owns the app copy, and so whom Passenger runs it as."""

    name: str
    uid: int
    gid: int


def app_user() -> AppUser:
    """Return the app user: `gwtest` (created as a system user if missing) when root, else the current user."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
    else:
        try:
            entry = pwd.getpwnam(APP_USER)
        except KeyError:
            run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", APP_USER], timeout=30)
            entry = pwd.getpwnam(APP_USER)
    return AppUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def hand_over(top: Path, user: AppUser) -> None:
    """Give a folder and everything in it to the app user (when root), its folders open to Apache (0755)."""
    owner = (user.uid, user.gid) if os.geteuid() == 0 else None
    for folder, _dirs, files in os.walk(top):
        os.chmod(folder, 0o755)  # whatever the caller's umask: Apache's workers read .htaccess files in here
        if owner:
            os.chown(folder, *owner)
            for name in files:
                os.lchown(os.path.join(folder, name), *owner)


def snapshot_project(dest: Path, source: Path = REPO) -> None:
    """Copy the project's git-tracked files (as they are in the work tree) into dest, as a cPanel upload would."""
    listed = run(["git", "-C", str(source), "ls-files", "-z"], timeout=30)
    for name in filter(None, listed.split("\0")):
        origin = source / name
        if not origin.is_file():  # deleted in the work tree, or a submodule
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target)


def build_venv(venv: Path, requirements: Path, pip_cache: Path) -> None:
    """Create a Python 3.11 virtualenv and install requirements into it, reusing pip's cache."""
    run([PYTHON, "-m", "venv", str(venv)], timeout=120)
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    # The caller's pip settings (index, proxy, certificates) apply; Python variables must not reach the venv.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PIP_CACHE_DIR": str(pip_cache)}
    run([*pip, "install", "-r", str(requirements)], timeout=600, env=env)


class Deployment:
    """What every Site of a test session shares: the app user, a traversable work folder and the virtualenv."""

    def __init__(self, pip_cache: Path) -> None:
        self.user = app_user()
        # pytest's own temp folders are 0700 root: the app user could not reach an app root inside them.
        self.work = Path(tempfile.mkdtemp(prefix="gwd-", dir="/tmp"))
        self.work.chmod(0o755)
        self.sites: list[Site] = []
        self.source = self.work / "src"  # one snapshot for every Site of the session
        self.venv = self.work / "venv"
        try:
            snapshot_project(self.source)
            build_venv(self.venv, self.source / "requirements.txt", pip_cache)
            hand_over(self.venv, self.user)
        except BaseException:
            self.remove()
            raise

    def site(self, **options) -> Site:
        """Return a new (not yet started) Site in its own folder."""
        self.sites.append(Site(self, self.work / f"s{len(self.sites) + 1}", **options))
        return self.sites[-1]

    def remove(self) -> None:
        """Stop any Site still running and delete the work folder."""
        for site in self.sites:
            site.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quoted(value: str) -> str:
    """Quote a value for an Apache directive (as cPanel's SetEnv lines are)."""
    if any(c in value for c in '\\\n\r"'):
        raise ValueError(f"value not supported in this harness's Apache config: {value!r}")
    return f'"{value}"'


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll condition() until it returns something truthy; raise TimeoutError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Return whether pid is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Site:
    """One private Apache + mod_passenger serving one copy of the gateway on 127.0.0.1, cPanel style.

    Layout under `home`: `app/` (the app root, owned by the app user), `public_html/` (the document root; with a
    sub-URI the app's folder `public_html/<uri>/` holds the app's .htaccess, as cPanel makes it), `conf/`, `logs/`,
    `run/` and `r/` (Passenger's instance registry: its socket paths must stay under ~100 characters).
    """

    def __init__(
        self,
        deployment: Deployment,
        home: Path,
        *,
        base_uri: str = "/",
        env: Mapping[str, str] | None = None,
        pool_size: int = 4,
        htaccess: str | None = None,
        compress_all: bool = True,
    ) -> None:
        """Lay out a Site; htaccess defaults to the project's cpanel/htaccess, compress_all to cPanel's DEFLATE."""
        if not base_uri.startswith("/") or (base_uri != "/" and base_uri.endswith("/")):
            raise ValueError("base_uri is / or /name")
        self.deployment = deployment
        self.home = home
        self.base_uri = base_uri
        self.env = dict(env or {})
        self.pool_size = pool_size
        self.compress_all = compress_all
        self.app_root = home / "app"
        self.docroot = home / "public_html"
        self.app_dir = self.docroot / base_uri.strip("/") if base_uri != "/" else self.docroot
        self.conf = home / "conf" / "apache2.conf"
        self.registry = home / "r"
        if len(str(self.registry)) > 60:  # Passenger adds ~40 characters; Unix socket paths end at ~100
            raise ValueError(f"instance registry path too long for Passenger's sockets: {self.registry}")
        self.pid_file = home / "run" / "apache2.pid"
        self.error_log_path = home / "logs" / "error.log"
        self.passenger_log_path = home / "logs" / "passenger.log"
        self.port = 0
        self._running = False
        self._restarted_at = 0.0
        for folder in (home, self.conf.parent, self.registry, self.pid_file.parent, self.error_log_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
            # Whatever the caller's umask: Apache's workers (www-data) connect to Passenger's sockets under r/.
            folder.chmod(0o755)
        shutil.copytree(deployment.source, self.app_root)
        for runtime in ("storage", "tmp"):
            (self.app_root / runtime).mkdir(exist_ok=True)
        self.app_dir.mkdir(parents=True, exist_ok=True)
        shipped = self.app_root / HTACCESS
        if htaccess is None:
            htaccess = shipped.read_text() if shipped.is_file() else ""  # the tests notice a missing file
        self.write_htaccess(htaccess)
        hand_over(self.app_root, deployment.user)
        hand_over(self.docroot, deployment.user)

    # -- configuration ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The app's URL, sub-URI included, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}{self.base_uri.rstrip('/')}"

    @property
    def python(self) -> Path:
        """The virtualenv's interpreter (cPanel's ~/virtualenv/<app>/3.11/bin/python)."""
        return self.deployment.venv / "bin" / "python"

    def write_htaccess(self, text: str) -> None:
        """Write the app folder's .htaccess (read on every request, so it needs no restart)."""
        path = self.app_dir / ".htaccess"
        path.write_text(text)
        path.chmod(0o644)
        if os.geteuid() == 0:
            os.chown(path, self.deployment.user.uid, self.deployment.user.gid)

    def write_dotenv(self, settings: Mapping[str, str]) -> None:
        """Write the app root's .env (private to the app user, as cpanel/deploy.sh leaves it)."""
        path = self.app_root / ".env"
        path.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
        path.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(path, self.deployment.user.uid, self.deployment.user.gid)

    def config_text(self) -> str:
        """Return the Apache configuration: global part, then the cPanel-style app block."""
        h = self.home
        modules = "\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in APACHE_MODULES)
        run_as = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        setenv = "\n".join(f"    SetEnv {name} {quoted(value)}" for name, value in self.env.items())
        compress = "    SetOutputFilter DEFLATE\n" if self.compress_all else ""
        block = f"""\
    # The block cPanel's "Setup Python App" writes (there into the .htaccess; Debian's module refuses it there).
    PassengerAppRoot {quoted(str(self.app_root))}
    PassengerBaseURI {quoted(self.base_uri)}
    PassengerPython {quoted(str(self.python))}
    PassengerAppType wsgi
    PassengerStartupFile passenger_wsgi.py
{setenv}"""
        app_section = f"<Directory {quoted(str(self.app_dir))}>\n{block}\n</Directory>" if self.base_uri != "/" else ""
        root_block = block if self.base_uri == "/" else ""
        return f"""\
# Private Apache for the deployment tests: loopback only, its own files, nothing from /etc/apache2 but the
# Passenger module's own .load/.conf as Debian ships them.
ServerRoot {quoted(str(h))}
DefaultRuntimeDir {quoted(str(self.pid_file.parent))}
PidFile {quoted(str(self.pid_file))}
Mutex file:{self.pid_file.parent} default
ErrorLog {quoted(str(self.error_log_path))}
LogLevel warn
Listen 127.0.0.1:{self.port}
ServerName 127.0.0.1
{run_as}
{modules}
Include {PASSENGER_LOAD}
Include {PASSENGER_CONF}

StartServers 1
ServerLimit 2
MinSpareThreads 10
MaxSpareThreads 50
ThreadsPerChild 25
MaxRequestWorkers 50
Timeout 60
KeepAlive On

LogFormat "%h %t \\"%r\\" %>s %b %D" timed
CustomLog {quoted(str(h / "logs" / "access.log"))} timed
TypesConfig /dev/null

PassengerInstanceRegistryDir {quoted(str(self.registry))}
PassengerLogFile {quoted(str(self.passenger_log_path))}
PassengerStatThrottleRate 0
PassengerMaxPoolSize {self.pool_size}
PassengerStartTimeout 60
# Loopback only: Passenger would otherwise call home (telemetry, security update check).
PassengerDisableAnonymousTelemetry on
PassengerDisableSecurityUpdateCheck on

DocumentRoot {quoted(str(self.docroot))}
<Directory />
    AllowOverride None
    Require all denied
</Directory>
# As in every stock Apache (and cPanel's): .htaccess files, which hold cPanel's SetEnv secrets, are never served.
<FilesMatch "^\\.ht">
    Require all denied
</FilesMatch>
<Directory {quoted(str(self.docroot))}>
    Options None
    AllowOverride All
    Require all granted
    # cPanel > Optimize Website > "Compress all content".
{compress}{root_block}
</Directory>
{app_section}
"""

    # -- running ------------------------------------------------------------------------------------------------

    def apachectl(self, action: str, timeout: float = 30) -> None:
        """Run `apache2 -f <conf> -k <action>` with a clean environment (nothing of ours leaks into the app)."""
        run([APACHE, "-f", str(self.conf), "-k", action], timeout=timeout, env={"PATH": CLEAN_PATH})

    def start(self, timeout: float = 60) -> Site:
        """Start Apache on a free loopback port and wait until the app answers /health."""
        for attempt in range(3):
            self.port = free_port()
            self.conf.write_text(self.config_text())
            try:
                self.apachectl("start")
            except RuntimeError as exc:
                if "Address already in use" in str(exc) and attempt < 2:
                    continue  # someone took the port in between
                raise RuntimeError(f"{exc}\n{self.error_log()}") from None
            break
        self._running = True
        try:
            wait_until(self._read_pid, 15, "Apache's pid file")
            wait_until(self._health, timeout, f"the app at {self.url}/health", interval=0.2)
        except TimeoutError as exc:
            report = f"{exc}\n--- error log\n{self.error_log()}\n--- passenger log\n{self.passenger_log()}"
            self.stop()
            raise TimeoutError(report) from None
        return self

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def _health(self) -> bool:
        """Return whether /health answers 200; raise on an error answer (Passenger's "could not be started")."""
        try:
            response = requests.get(self.url + "/health", timeout=30)
        except requests.RequestException:
            return False
        if response.status_code != 200:
            # Passenger holds requests while the app spawns: any other answer is a real failure, no use waiting.
            raise TimeoutError(f"{self.url}/health answered {response.status_code}: {response.text[:2000]}")
        return True

    def stop(self, timeout: float = 20) -> None:
        """Stop Apache and Passenger's processes (bounded waits; SIGKILL as a last resort)."""
        if not self._running:
            return
        self._running = False
        pid = self._read_pid()
        passenger = self.passenger_pids()
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.apachectl("stop", timeout=timeout)
        try:
            wait_until(lambda: pid is None or not alive(pid), timeout, "Apache to stop")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # Apache's parent leads its own process group
        # Passenger's watchdog takes its core and the app processes down once Apache is gone.
        try:
            wait_until(lambda: not any(map(alive, passenger + self.app_pids())), timeout, "Passenger to stop")
        except TimeoutError:
            for leftover in passenger + self.app_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)

    def restart_app(self) -> None:
        """Ask Passenger to restart the app on its next request, as cPanel's "Restart" does."""
        restart = self.app_root / "tmp" / "restart.txt"
        restart.touch()
        # Passenger keeps restart.txt's mtime in whole seconds: a second touch within the same second goes unnoticed.
        stamp = self._restarted_at = max(time.time(), self._restarted_at + 1.0)
        os.utime(restart, (stamp, stamp))
        if os.geteuid() == 0:
            os.chown(restart, self.deployment.user.uid, self.deployment.user.gid)

    def __enter__(self) -> Site:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- looking at it ------------------------------------------------------------------------------------------

    def error_log(self) -> str:
        """Return Apache's error log."""
        return self.error_log_path.read_text(errors="replace") if self.error_log_path.exists() else ""

    def passenger_log(self) -> str:
        """Return Passenger's log (the app's stdout/stderr arrive there as `App <pid> output:` lines)."""
        return self.passenger_log_path.read_text(errors="replace") if self.passenger_log_path.exists() else ""

    def passenger_pids(self) -> list[int]:
        """Return the pids of Passenger's watchdog and core from its instance registry."""
        pids = []
        for name in ("watchdog.pid", "core.pid"):
            for path in self.registry.glob(f"passenger.*/{name}"):
                with contextlib.suppress(OSError, ValueError):
                    pids.append(int(path.read_text().strip()))
        return pids

    def app_pids(self) -> list[int]:
        """Return the pids of live processes whose working directory is this app root (the app's processes)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "cwd") == str(self.app_root) and alive(int(entry.name)):
                        pids.append(int(entry.name))
        return pids

    def served_by(self) -> dict[int, int]:
        """Return {pid: requests processed} for each app process Passenger has now (from `passenger-status`)."""
        env = {"PATH": CLEAN_PATH, "PASSENGER_INSTANCE_REGISTRY_DIR": str(self.registry)}
        xml = run([PASSENGER_STATUS, "--show=xml"], timeout=30, env=env)
        root = ElementTree.fromstring(xml[xml.index("<?xml") :].encode("iso-8859-1"))
        return {int(p.findtext("pid", "0")): int(p.findtext("processed", "0")) for p in root.iter("process")}
