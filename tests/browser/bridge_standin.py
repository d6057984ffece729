"""LMArenaBridge's userscript, played by `bridge_standin.js`: its fetch wrapper and its jobs, driven from a test."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from playwright.async_api import Page


@functools.cache
def _source() -> str:
    return Path(__file__).with_name("bridge_standin.js").read_text(encoding="utf-8")


def bridge_script(run_at: str = "document-end") -> str:
    """Return the stand-in userscript; `run_at` replaces its @run-at (the real script's is document-end)."""
    return re.sub(r"(// @run-at\s+)\S+", lambda m: m[1] + run_at, _source(), count=1)


async def run_job(page: Page, session_id: str, message_id: str) -> dict[str, Any]:
    """Run one bridge job in the page, as the bridge does for each request its server sends; return what it read."""
    ids = {"session_id": session_id, "message_id": message_id}
    return await page.evaluate("(ids) => window.__bridgeStandIn.runJob(ids)", ids)


async def state(page: Page) -> dict[str, Any]:
    """Return what the stand-in saw: capture mode, ids captured, wrapper calls, jobs, and whether it is outermost."""
    return await page.evaluate(
        """() => {
          const hook = window.__bridgeStandIn;
          return {captureMode: hook.captureMode, captured: hook.captured, calls: hook.calls, jobs: hook.jobs,
                  wrappedNative: hook.wrappedNative, outermost: window.fetch === hook.wrapper,
                  flag: window.isApiBridgeRequest};
        }"""
    )
