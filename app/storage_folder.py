"""The storage folder and the files the gateway keeps there: readable by the account it runs as, and no one else.

The folder comes from git as 0755 and SQLite creates its files with the process's umask (often 0644): sessions,
rate and in-flight counts, analytics and the generated secrets would be readable by every account on a shared host.
At start-up the gateway's files there become 0600, and the folder 0700 when it holds nothing else (a STORAGE_PATH in
a home folder or a web root must not lock Apache out of it); new SQLite files are created 0600 before SQLite opens
them, and their -wal and -shm files copy that mode.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sqlite3
import stat

from flask import Flask

from .config import ConfigError

log = logging.getLogger(__name__)

# What the gateway keeps in the storage folder: the session file and its lock and temporary files, providers.json,
# SQLite files with their journals, generated secrets; .gitkeep comes with the folder.
OWN_FILES = ("*.json", "*.json.lock", ".*.tmp", "*.sqlite3", "*.sqlite3-*", "*.secret", ".gitkeep")


def create_private(path: str) -> None:
    """Create path empty with mode 0600 (and its folder 0700) unless it exists; an existing file is not opened."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    # O_EXCL: an existing database is never opened here, since closing any descriptor of it would drop every POSIX
    # lock this process holds on it (SQLite's included).
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def make_private(folder: str) -> tuple[list[str], list[str]]:
    """Make the gateway's files in folder 0600, and folder 0700 if they are all it holds (owner bits kept).

    Return the paths whose mode changed, and what could not be changed, each with why.
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    entries = list(os.scandir(folder))
    own = [e.path for e in entries if e.is_file(follow_symlinks=False) and _own(e.name)]
    changed, failed = [], []
    if len(own) == len(entries):
        own.insert(0, folder)
    elif stat.S_IMODE(os.stat(folder).st_mode) & 0o077:
        failed.append(f"{folder} (it holds other things too: left as it is)")
    for path in own:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                os.chmod(path, mode & 0o700)
                changed.append(path)
        except OSError as exc:  # another account's file (uploaded as root, say): said, not fatal
            failed.append(f"{path} ({exc.strerror})")
    return changed, failed


def _own(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_FILES)


def init_app(app: Flask) -> None:
    """Make the storage folder (STORAGE_PATH's) and its files private before any service writes there."""
    folder = os.path.dirname(app.config["STORAGE_PATH"]) or "."
    try:
        changed, failed = make_private(folder)
    except OSError as exc:
        raise ConfigError(f"STORAGE_PATH: the folder {folder} cannot be created: {exc.strerror}") from None
    if changed:
        log.info("made private (other accounts could read them): %s", ", ".join(changed))
    if failed:
        log.warning("cannot make private, other accounts may read them: %s", ", ".join(failed))


def open_counts(
    path: str, busy_timeout: float, *schema: str, factory: type[sqlite3.Connection] = sqlite3.Connection
) -> sqlite3.Connection:
    """Open a private SQLite file of counts several processes share (WAL, no fsync), creating its tables."""
    create_private(path)  # SQLite would create it, and its -wal and -shm, readable by all
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False, factory=factory)
    conn.execute("PRAGMA journal_mode = WAL")
    # Counts lost in a power cut (the last second of rates, leases of requests gone anyway) cost nothing; an fsync
    # per request would cost every request.
    conn.execute("PRAGMA synchronous = OFF")
    for statement in schema:
        conn.execute(statement)
    return conn
