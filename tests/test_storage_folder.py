"""The storage folder is the account's alone: 0700, and every file the gateway keeps there 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import requests

from app.storage_folder import make_private
from tests.conftest import ADMIN_KEY
from tests.helpers.gateway_process import CLIENT_KEY, run_gateway

SID, MID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_by_others(folder: Path) -> dict[str, str]:
    """Return the folder and files in it that another account could read or write, with their modes."""
    paths = [folder, *(p for p in folder.iterdir() if p.is_file())]
    return {p.name: oct(mode(p)) for p in paths if mode(p) & 0o077}


@pytest.mark.slow  # a gateway process
def test_python_m_app_keeps_its_storage_private(bridge, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir(mode=0o755)  # as git checks it out
    storage.chmod(0o755)
    for leftover in (".gitkeep", "ratelimit.sqlite3"):  # from git, and from an earlier version: both 0644
        (storage / leftover).touch()
        (storage / leftover).chmod(0o644)
    settings = {
        "STORAGE_PATH": str(storage / "sessions.json"),
        "GATEWAY_ANALYTICS_PATH": str(storage / "analytics.sqlite3"),
        "GATEWAY_RATE_LIMIT_PER_MINUTE": "600",
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
    }
    with run_gateway(bridge.url, umask=0o022, **settings) as gateway:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        session = {"domain": "lmarena.ai", "session_name": "team", "session_id": SID, "message_id": MID}
        assert requests.post(f"{gateway.url}/session/register", json=session, headers=admin, timeout=10).ok
        assert requests.post(f"{gateway.url}/session/heartbeat", json=session, headers=admin, timeout=10).ok
        chat = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        key = {"Authorization": f"Bearer {CLIENT_KEY}"}
        assert (
            b"[DONE]" in requests.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=key, timeout=10).content
        )
        files = {p.name for p in storage.iterdir()}
        # While the process runs, its SQLite files have their -wal and -shm beside them: those count too.
        open_files = readable_by_others(storage)
    assert open_files == {}
    expected = {
        "sessions.json",
        "sessions-heartbeats.sqlite3-wal",
        "ratelimit.sqlite3-wal",
        "inflight.sqlite3-shm",
        "analytics.sqlite3",
        "userscript.secret",
        "dashboard.secret",
    }
    assert expected <= files
    assert readable_by_others(storage) == {}


def test_a_storage_folder_holding_only_the_gateways_files_is_made_private(tmp_path):
    folder = tmp_path / "storage"
    folder.mkdir()
    folder.chmod(0o775)
    for name, file_mode in (("sessions.json", 0o664), ("ratelimit.sqlite3-wal", 0o644), ("tool.secret", 0o740)):
        (folder / name).touch()
        (folder / name).chmod(file_mode)
    changed, failed = make_private(str(folder))
    assert failed == []
    assert sorted(Path(p).name for p in changed) == ["ratelimit.sqlite3-wal", "sessions.json", "storage", "tool.secret"]
    assert mode(folder) == 0o700
    # Group and others lose every bit; the owner's stay (tool.secret was 0740).
    assert [mode(folder / n) for n in ("sessions.json", "ratelimit.sqlite3-wal", "tool.secret")] == [
        0o600,
        0o600,
        0o700,
    ]


def test_a_folder_with_other_things_keeps_its_mode_and_theirs(tmp_path):
    # STORAGE_PATH in a home folder or a web root: Apache may need to pass through it, and the rest is not ours.
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o711)
    (home / "public_html").mkdir()
    (home / "index.html").touch()
    (home / "index.html").chmod(0o644)
    (home / "sessions.json").touch()
    (home / "sessions.json").chmod(0o644)
    outside = tmp_path / "elsewhere.secret"
    outside.touch()
    outside.chmod(0o644)
    os.symlink(outside, home / "link.secret")
    changed, failed = make_private(str(home))
    assert [Path(p).name for p in changed] == ["sessions.json"]
    assert failed == [f"{home} (it holds other things too: left as it is)"]
    assert (mode(home), mode(home / "index.html"), mode(home / "sessions.json")) == (0o711, 0o644, 0o600)
    assert mode(outside) == 0o644  # a link is not followed
