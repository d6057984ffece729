"""The runtime requirements hold the fixes the gateway relies on, and this environment meets them."""

from __future__ import annotations

import gzip
import re
import tracemalloc
from importlib.metadata import version
from pathlib import Path

import urllib3
from packaging.requirements import Requirement
from packaging.version import Version

from app.providers.exchange import READ_SIZE
from tests.upstreams.script import Status

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> dict[str, Requirement]:
    """Return requirements.txt's requirements by package name."""
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    parsed = (Requirement(line) for line in lines if line and not line.startswith("-"))
    return {re.sub(r"[-_.]+", "-", r.name.lower()): r for r in parsed}


def test_urllib3_floor_is_a_release_that_bounds_decompression():
    # Before 2.6.0 a streamed read decompressed whatever bytes it was given at once (CVE-2025-66471): a 1 MB gzip bomb
    # took 2.1 GB of memory. 2.6.3 fixed it for redirects (CVE-2026-21441), 2.7.0 for drain_conn() and Brotli's
    # second read (CVE-2026-44432).
    allowed = requirements()["urllib3"].specifier
    assert Version("2.6.3") not in allowed
    assert Version("2.7.0") in allowed


def test_the_installed_packages_meet_the_requirements():
    unmet = {name: version(name) for name, r in requirements().items() if version(name) not in r.specifier}
    assert unmet == {}


def test_a_streamed_read_of_a_gzip_bomb_decodes_only_what_it_returns(bridge):
    # How exchange.py and transport.py read every upstream answer: read1(READ_SIZE) with decoding. Older urllib3
    # handed out READ_SIZE too, but inflated everything it had received behind it.
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in about 64 KiB
    bridge.script(Status(200, body=bomb, headers={"content-encoding": "gzip"}))
    pool = urllib3.connection_from_url(bridge.url, retries=False)
    try:
        response = pool.urlopen("POST", "/v1/chat/completions", body=b"{}", preload_content=False)
        response.read1(1)  # the head and the first bytes of the body have arrived
        tracemalloc.start()
        try:
            sizes = [len(response.read1(READ_SIZE, decode_content=True)) for _ in range(4)]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        response.drain_conn()
    finally:
        pool.close()
    assert sizes == [READ_SIZE] * 4
    assert peak < 16 * READ_SIZE, peak  # 2.3.0 held 16 MiB here, all it had received inflated at once
