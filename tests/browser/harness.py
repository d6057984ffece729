"""Run a userscript "as Tampermonkey would" in Debian's headless Chromium, driven by Playwright's async API.

Sync tests use `Chromium` (a context manager owning an event loop thread) or the one-shot `run_userscript` and
`screenshot` functions. `https://lmarena.ai/` and its subdomains resolve to the fake on `lmarena_port`; loopback
addresses are reached as they are; every other host fails to resolve, so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from . import gm_http
from .userscript import GM_API, Metadata, build_init_script, connect_allowed, parse_metadata

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
)  # fmt: skip
LMARENA_URL = "https://lmarena.ai/"
REFUSED = "Refused to connect: this domain is not a part of the @connect list"  # Tampermonkey's wording
VIEWPORT = {"width": 1280, "height": 800}
Actions = Callable[[Page, "UserscriptRun"], Awaitable[object] | object]


def resolver_rules(lmarena_port: int | None) -> str:
    """Return Chromium's --host-resolver-rules: lmarena hosts to the fake (port included), loopback as is, else none."""
    rules = [f"MAP lmarena.ai 127.0.0.1:{lmarena_port}", f"MAP *.lmarena.ai 127.0.0.1:{lmarena_port}"]
    rules = (rules if lmarena_port else []) + ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1"]
    return ", ".join(rules)


@dataclass(frozen=True)
class GMRequest:
    """One GM_xmlhttpRequest call: what the script asked for and how it ended (status None: onerror/ontimeout)."""

    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    status: int | None
    error: str | None
    response_text: str
    page_url: str
    at: float

    @property
    def json(self) -> Any:
        """Return the request body decoded as JSON."""
        return json.loads(self.body or "null")


@dataclass(frozen=True)
class ConsoleMessage:
    """One console message of the page (the userscript's logging included)."""

    type: str
    text: str
    url: str


@dataclass
class UserscriptRun:
    """Everything one run saw; `page` is set only while the actions run."""

    meta: Metadata
    page_url: str
    values: dict[str, Any]
    gm_requests: list[GMRequest] = field(default_factory=list)
    executions: list[str] = field(default_factory=list)
    console: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    unsupported_grants: list[str] = field(default_factory=list)
    companion_runs: list[tuple[str, str]] = field(default_factory=list)  # (@name, URL) each time a companion ran
    title: str = ""
    text: str = ""
    page: Page | None = None
    live_values: bool = False  # values written during the run reach documents loaded later (Playwright >= 1.60)
    pending: int = field(default=0, repr=False)  # GM requests and value writes still being handled

    def console_text(self) -> str:
        """Return all console messages, one a line."""
        return "\n".join(message.text for message in self.console)

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Wait (inside actions) until `predicate()` is truthy; raise TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout:g} s")
            await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Snapshot:
    """What `screenshot` saw: the final URL, HTTP status, title and visible text, and where the PNG went."""

    url: str
    status: int | None
    title: str
    text: str
    path: Path
    page_errors: list[str]
    console: list[ConsoleMessage] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # every URL the page asked for, in order


class Chromium:
    """Headless Chromium with the fake lmarena.ai mapped in; each run or screenshot gets a fresh browser context."""

    def __init__(self, lmarena_port: int | None = None, *, timeout: float = 20.0) -> None:
        self.lmarena_port = lmarena_port
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def start(self) -> Self:
        """Start the event loop thread, Playwright and Chromium."""
        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"{CHROMIUM} is missing: run `sh tests/helpers/install-system-deps.sh` as root")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="playwright-loop", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(), self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    async def _start(self) -> None:
        self._playwright = await async_playwright().start()
        args = [*CHROMIUM_ARGS, f"--host-resolver-rules={resolver_rules(self.lmarena_port)}"]
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=args, timeout=self.timeout * 1000
        )

    def close(self) -> None:
        """Close Chromium and Playwright, then stop the event loop thread (each step bounded)."""
        if self._loop is None:
            return
        try:
            self._call(self._close(), 15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._loop.close()
            self._loop = self._thread = None

    async def _close(self) -> None:
        try:
            if self._browser is not None:
                await self._browser.close()
            if self._playwright is not None:
                await self._playwright.stop()
        finally:
            self._browser = self._playwright = None
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
            await self._loop.shutdown_default_executor()  # the threads that made GM requests

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("Chromium is not started")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"browser step did not finish within {timeout:g} s") from None

    def run_userscript(
        self,
        script_source: str,
        page_url: str = LMARENA_URL,
        actions: Actions | None = None,
        *,
        values: dict[str, Any] | None = None,
        timeout: float | None = None,
        before: Sequence[str] = (),
        after: Sequence[str] = (),
    ) -> UserscriptRun:
        """Open `page_url` with the userscript installed, run `actions(page, run)` (sync or async), return the run.

        `values` seeds the GM_*Value store; `run.values` holds it afterwards (seed the next run with it to play a
        browser restart). `before` and `after` are other userscripts installed beside it (`@grant none` only), placed
        before or after it in Tampermonkey's order: of scripts with the same @run-at, the earlier runs first.
        Raises TimeoutError when the whole run takes longer than `timeout` seconds.
        """
        meta = parse_metadata(script_source)
        run = UserscriptRun(meta, page_url, dict(values or {}))
        run.unsupported_grants = [grant for grant in meta.grants if grant not in GM_API]
        companions = ([_checked(s) for s in before], [_checked(s) for s in after])
        self._call(self._run(run, script_source, actions, companions), timeout or self.timeout)
        return run

    async def _run(
        self, run: UserscriptRun, source: str, actions: Actions | None, companions: tuple[list, list] = ([], [])
    ) -> None:
        assert self._browser is not None
        context = await self._browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
        try:
            context.set_default_timeout(10_000)
            before, after = [[await self._companion(context, run, *c) for c in side] for side in companions]
            for companion in before:
                await companion.install()
            await self._install(context, run, source, after)
            page = run.page = await context.new_page()
            page.on("console", lambda m: run.console.append(ConsoleMessage(m.type, m.text, m.location.get("url", ""))))
            page.on("pageerror", lambda error: run.page_errors.append(str(error)))
            await page.goto(run.page_url, wait_until="load")
            if actions is not None:
                result = actions(page, run)
                if inspect.isawaitable(result):
                    await result
            await self._settle(context, run)
            run.title = await page.title()
            run.text = await page.evaluate("document.body ? document.body.innerText : ''")
        finally:
            run.page = None
            await context.close()

    async def _companion(
        self, context: BrowserContext, run: UserscriptRun, meta: Metadata, source: str
    ) -> _CompanionScript:
        token = secrets.token_hex(8)
        bindings = {name: f"__tmHarness_{name}_{token}" for name in ("xhr", "value", "event")}

        def on_event(_source: dict[str, Any], event: dict[str, Any]) -> None:
            if event.get("type") == "ran":
                run.companion_runs.append((meta.name, event["url"]))

        await context.expose_binding(bindings["event"], on_event)
        return _CompanionScript(context, build_init_script(meta, source, {}, token, bindings))

    async def _install(
        self, context: BrowserContext, run: UserscriptRun, source: str, after: Sequence[_CompanionScript] = ()
    ) -> None:
        token = secrets.token_hex(8)
        bindings = {name: f"__tmHarness_{name}_{token}" for name in ("xhr", "value", "event")}
        installed: list[Any] = []
        lock = asyncio.Lock()

        async def install(values: dict[str, Any]) -> None:
            # Playwright >= 1.60 returns a Disposable: swap in a script with the current values, so documents loaded
            # later in this run see them as Tampermonkey's storage would. The shim's guard runs only one copy.
            handle = await context.add_init_script(script=build_init_script(run.meta, source, values, token, bindings))
            if installed and hasattr(installed[-1], "close"):
                await installed.pop().close()
            installed.append(handle)
            run.live_values = hasattr(handle, "close")
            for companion in after:  # re-added behind it, so they stay after it in Tampermonkey's order
                await companion.install()

        async def on_value(_source: dict[str, Any], change: dict[str, Any]) -> None:
            run.pending += 1
            try:
                async with lock:  # FIFO: changes apply in the order the page made them
                    values = dict(run.values)
                    if change["op"] == "set":
                        values[change["key"]] = change["value"]
                    else:
                        values.pop(change["key"], None)
                    if run.live_values:
                        await install(values)
                    run.values = values  # only now, so a test that saw the value can navigate safely
            finally:
                run.pending -= 1

        def on_event(source: dict[str, Any], event: dict[str, Any]) -> None:
            if event.get("type") == "ran":
                run.executions.append(event["url"])
            else:
                run.events.append(event)

        await context.expose_binding(bindings["xhr"], functools.partial(self._gm_request, run))
        await context.expose_binding(bindings["value"], on_value)
        await context.expose_binding(bindings["event"], on_event)
        await install(run.values)

    async def _gm_request(self, run: UserscriptRun, source: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        run.pending += 1
        try:
            page_url = source["frame"].url
            if connect_allowed(run.meta.connects, request["url"], page_url):
                outcome = await asyncio.to_thread(gm_http.perform, request, self.lmarena_port)
            else:
                outcome = {"kind": "error", "error": REFUSED}
            run.gm_requests.append(
                GMRequest(request["method"], request["url"], request["headers"], request["data"], outcome.get("status"),
                          outcome.get("error"), outcome.get("responseText", ""), page_url, time.time())
            )  # fmt: skip
            return outcome
        finally:
            run.pending -= 1

    async def _settle(self, context: BrowserContext, run: UserscriptRun, timeout: float = 5.0) -> None:
        """Let binding calls already sent by the pages arrive, and GM requests in flight finish (bounded)."""
        for page in context.pages:
            with contextlib.suppress(PlaywrightError):  # a page the script closed or crashed has nothing to send
                await page.evaluate("0")
        await asyncio.sleep(0.05)
        await run.wait_for(lambda: run.pending == 0, timeout)

    def screenshot(
        self,
        url: str,
        path: str | Path,
        *,
        full_page: bool = True,
        timeout: float | None = None,
        actions: Callable[[Page], Awaitable[object]] | None = None,
    ) -> Snapshot:
        """Open `url` (no userscript), run `actions(page)` if given, save a PNG at `path`, return what rendered."""
        return self._call(self._screenshot(url, Path(path), full_page, actions), timeout or self.timeout)

    async def _screenshot(self, url: str, path: Path, full_page: bool, actions) -> Snapshot:
        assert self._browser is not None
        context = await self._browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
        try:
            context.set_default_timeout(10_000)
            page = await context.new_page()
            errors: list[str] = []
            console: list[ConsoleMessage] = []
            requested: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: console.append(ConsoleMessage(m.type, m.text, m.location.get("url", ""))))
            page.on("request", lambda r: requested.append(r.url))
            # The status shown is the last document's: actions may submit a form or follow a link.
            statuses: list[int] = []
            page.on("response", lambda r: r.request.is_navigation_request() and statuses.append(r.status))
            await page.goto(url, wait_until="load")
            if actions is not None:
                await actions(page)
            await page.screenshot(path=str(path), full_page=full_page)
            text = await page.evaluate("document.body ? document.body.innerText : ''")
            status = statuses[-1] if statuses else None
            return Snapshot(page.url, status, await page.title(), text, path, errors, console, requested)
        finally:
            await context.close()


class _CompanionScript:
    """A companion userscript's init script, which can be added again (behind the scripts added since)."""

    def __init__(self, context: BrowserContext, script: str) -> None:
        self.context, self.script, self.handle = context, script, None

    async def install(self) -> None:
        """Add the init script; remove the copy added before, when Playwright can (>= 1.60)."""
        handle = await self.context.add_init_script(script=self.script)
        if hasattr(self.handle, "close"):
            await self.handle.close()
        self.handle = handle


def _checked(source: str) -> tuple[Metadata, str]:
    meta = parse_metadata(source)
    if meta.sandboxed:
        raise ValueError(f"companion userscript {meta.name!r}: the harness runs them with @grant none only")
    return meta, source


def run_userscript(
    script_source: str,
    page_url: str = LMARENA_URL,
    actions: Actions | None = None,
    *,
    lmarena_port: int | None = None,
    values: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> UserscriptRun:
    """Start Chromium, run the userscript once (see Chromium.run_userscript), close Chromium."""
    with Chromium(lmarena_port, timeout=timeout) as browser:
        return browser.run_userscript(script_source, page_url, actions, values=values)


def screenshot(url: str, path: str | Path, *, lmarena_port: int | None = None, timeout: float = 30.0) -> Snapshot:
    """Start Chromium, save a screenshot of `url` at `path` (see Chromium.screenshot), close Chromium."""
    with Chromium(lmarena_port, timeout=timeout) as browser:
        return browser.screenshot(url, path)
