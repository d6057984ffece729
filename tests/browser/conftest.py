"""Fixtures of the browser tests: the fake lmarena.ai and a Chromium that resolves lmarena.ai to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.fake_lmarena import FakeLMArena
from tests.browser.harness import Chromium


@pytest.fixture
def lmarena() -> Iterator[FakeLMArena]:
    """Serve the fake lmarena.ai for one test (a module may serve it its own way)."""
    with FakeLMArena() as fake:
        yield fake


@pytest.fixture
def chromium(lmarena: FakeLMArena) -> Iterator[Chromium]:
    """Run Chromium with lmarena.ai resolving to the fake."""
    with Chromium(lmarena.port) as browser:
        yield browser
