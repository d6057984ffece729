"""The userscript harness itself: real Chromium, the fake lmarena.ai over TLS, and a loopback echo server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.async_api import Error as PlaywrightError

from tests.browser.fake_lmarena import FakeLMArena, answer_text
from tests.browser.harness import Chromium, run_userscript
from tests.browser.userscript import connect_allowed, parse_metadata

CAPTURE_SCRIPT = """\
// ==UserScript==
// @name         Harness capture test
// @version      0.1
// @match        https://lmarena.ai/*
// @match        https://*.lmarena.ai/*
// @grant        GM_xmlhttpRequest
// @grant        unsafeWindow
// @connect      127.0.0.1
// @run-at       document-start
// ==/UserScript==
(function () {
  'use strict';
  const ENDPOINT = __ENDPOINT__;
  const UUID = '([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})';
  const RETRY = new RegExp('/nextjs-api/stream/retry-evaluation-session-message/' + UUID + '/messages/' + UUID);
  function capture(url, via) {
    const ids = RETRY.exec(String(url));
    if (!ids) return;
    console.log('[capture] ' + via + ' ' + ids[1] + ' ' + ids[2]);
    GM_xmlhttpRequest({
      method: 'POST', url: ENDPOINT, timeout: 5000,
      headers: {'Content-Type': 'application/json'},
      data: JSON.stringify({session_id: ids[1], message_id: ids[2], via: via}),
      onload: (r) => console.log('[capture] registered ' + r.status),
      onerror: (r) => console.log('[capture] failed ' + r.error),
    });
  }
  const page = unsafeWindow;
  const originalFetch = page.fetch;
  page.fetch = function (input) {
    capture(input instanceof page.Request ? input.url : input, 'fetch');
    return originalFetch.apply(this, arguments);
  };
  const originalOpen = page.XMLHttpRequest.prototype.open;
  page.XMLHttpRequest.prototype.open = function (method, url) {
    capture(url, 'xhr');
    return originalOpen.apply(this, arguments);
  };
})();
"""


def userscript(body: str, *meta: str) -> str:
    """Return a userscript with the given metadata lines (without `// @`) and body."""
    lines = "".join(f"// @{line}\n" for line in ("name Harness probe", "version 1.2.3", *meta))
    return f"// ==UserScript==\n{lines}// ==/UserScript==\n{body}\n"


class _EchoHandler(BaseHTTPRequestHandler):
    server: _Echo

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""

    def do_GET(self) -> None:
        """Serve a small page (proof that Chromium reaches loopback hosts unmapped)."""
        self._answer(200, b"<!doctype html><title>Echo</title><h1>Echo server</h1>", "text/html")

    def do_POST(self) -> None:
        """Record the JSON body; /slow answers only after a second."""
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/slow":
            self.server.stopping.wait(1.0)
        with self.server.lock:
            self.server.received.append((self.path, dict(self.headers), json.loads(body or b"null")))
        self._answer(200, b'{"ok":true}', "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Echo(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.received: list[tuple[str, dict[str, str], object]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, path: str = "/register") -> list[object]:
        with self.lock:
            return [body for got, _, body in self.received if got == path]


@pytest.fixture
def echo() -> Iterator[_Echo]:
    """Start a loopback HTTP server that records the JSON it is sent."""
    server = _Echo()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)


@pytest.fixture(scope="module")
def lmarena() -> Iterator[FakeLMArena]:
    """Serve the fake lmarena.ai for the whole module."""
    with FakeLMArena() as fake:
        yield fake


@pytest.fixture(scope="module")
def chromium(lmarena: FakeLMArena) -> Iterator[Chromium]:
    """Share one Chromium (fresh context per run) that resolves lmarena.ai to the fake."""
    with Chromium(lmarena.port) as browser:
        yield browser


@pytest.mark.parametrize(
    ("pattern", "url", "runs"),
    [
        ("https://lmarena.ai/*", "https://lmarena.ai/", True),
        ("https://lmarena.ai/*", "https://lmarena.ai/c/abc?x=1#frag", True),
        ("https://lmarena.ai/*", "https://canary.lmarena.ai/", False),
        ("https://lmarena.ai/*", "http://lmarena.ai/", False),
        ("https://*.lmarena.ai/*", "https://lmarena.ai/", True),
        ("https://*.lmarena.ai/*", "https://canary.lmarena.ai/c/1", True),
        ("https://*.lmarena.ai/*", "https://notlmarena.ai/", False),
        ("https://*.lmarena.ai/*", "https://lmarena.ai.evil.example/", False),
        ("https://canary.lmarena.ai/*", "https://lmarena.ai/", False),
        ("*://lmarena.ai/c/*", "http://lmarena.ai/c/1", True),
        ("*://lmarena.ai/c/*", "https://lmarena.ai/leaderboard", False),
        ("http://127.0.0.1/*", "http://127.0.0.1:5000/x", True),
        ("<all_urls>", "https://example.com/", True),
    ],
)
def test_match_pattern_selects_urls(pattern: str, url: str, runs: bool) -> None:
    assert parse_metadata(userscript("", f"match {pattern}")).runs_on(url) is runs


def test_exclude_and_include_patterns() -> None:
    meta = parse_metadata(userscript("", "include https://lmarena.ai/*", "exclude *leaderboard*"))
    assert meta.runs_on("https://lmarena.ai/c/1")
    assert not meta.runs_on("https://lmarena.ai/leaderboard")
    with pytest.raises(ValueError, match="invalid @match"):
        parse_metadata(userscript("", "match lmarena.ai"))


@pytest.mark.parametrize(
    ("connects", "url", "allowed"),
    [
        (("127.0.0.1",), "http://127.0.0.1:5000/register", True),
        (("localhost",), "http://127.0.0.1:5000/register", False),
        (("example.com",), "https://api.example.com/x", True),
        (("example.com",), "https://badexample.com/x", False),
        (("self",), "https://lmarena.ai/x", True),
        (("self",), "https://canary.lmarena.ai/x", False),
        (("*",), "http://anything.test/", True),
        ((), "http://127.0.0.1/", False),
    ],
)
def test_connect_rules(connects: tuple[str, ...], url: str, allowed: bool) -> None:
    assert connect_allowed(connects, url, "https://lmarena.ai/c/1") is allowed


def test_userscript_captures_ids_from_fetch_xhr_and_request(chromium, lmarena, echo) -> None:
    script = CAPTURE_SCRIPT.replace("__ENDPOINT__", json.dumps(f"{echo.url}/register"))
    expected = []

    async def actions(page, run) -> None:
        for button in ("#retry", "#retry-xhr", "#retry-request"):
            if expected:  # a different conversation for each button
                lmarena.new_ids()
                await page.reload()
            expected.append({"session_id": lmarena.session_id, "message_id": lmarena.message_id})
            await page.click(button)
            # Wait for the script's onload, not just the echo: a reload would drop the callback (as in Tampermonkey).
            await run.wait_for(lambda: run.console_text().count("registered 200") == len(expected))
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('retried')")

    run = chromium.run_userscript(script, "https://lmarena.ai/c/some-chat", actions)

    vias = ["fetch", "xhr", "fetch"]
    assert echo.bodies() == [ids | {"via": via} for ids, via in zip(expected, vias, strict=True)]
    assert [(r.session_id, r.message_id) for r in lmarena.retries[-3:]] == [tuple(e.values()) for e in expected]
    assert {r.method for r in lmarena.retries} == {"PUT"}
    assert [(r.method, r.status) for r in run.gm_requests] == [("POST", 200)] * 3
    assert run.gm_requests[0].headers == {"Content-Type": "application/json"}
    assert run.gm_requests[0].json == expected[0] | {"via": "fetch"}
    assert run.executions == ["https://lmarena.ai/c/some-chat"] * 3
    assert run.console_text().count("[capture] registered 200") == 3
    assert answer_text() in run.text
    assert run.page_errors == []


def test_match_decides_which_frames_run_the_script(chromium) -> None:
    script = userscript("console.log('canary ran', location.href)", "match https://canary.lmarena.ai/*")

    async def actions(page, run) -> None:
        await page.evaluate(
            "new Promise(done => { const f = document.createElement('iframe');"
            " f.src = 'https://canary.lmarena.ai/c/framed'; f.onload = done; document.body.append(f); })"
        )
        await run.wait_for(lambda: run.executions)  # document-idle: it may run after the frame's load event
        await page.goto("https://canary.lmarena.ai/")

    run = chromium.run_userscript(script, "https://lmarena.ai/", actions)

    assert run.executions == ["https://canary.lmarena.ai/c/framed", "https://canary.lmarena.ai/"]
    assert "canary ran https://lmarena.ai/" not in run.console_text()


def test_connect_is_enforced_and_timeouts_reported(chromium, echo) -> None:
    port = echo.server_address[1]
    body = f"""
      const report = (name) => (r) => console.log(name + ' ' + r.status + ' ' + (r.error || ''));
      for (const [name, url, timeout] of [['allowed', 'http://127.0.0.1:{port}/register', 0],
                                           ['refused', 'http://localhost:{port}/register', 0],
                                           ['slow', 'http://127.0.0.1:{port}/slow', 200]]) {{
        GM_xmlhttpRequest({{method: 'POST', url, data: JSON.stringify({{name}}), timeout,
          onload: report(name + ' onload'), onerror: report(name + ' onerror'),
          ontimeout: report(name + ' ontimeout')}});
      }}"""
    script = userscript(body, "match https://lmarena.ai/*", "grant GM_xmlhttpRequest", "connect 127.0.0.1")

    run = chromium.run_userscript(script)

    assert echo.bodies() == [{"name": "allowed"}]
    outcomes = {r.url.rsplit(":", 1)[0]: (r.status, r.error) for r in sorted(run.gm_requests, key=lambda r: r.url)}
    assert outcomes["http://localhost"][0] is None and "@connect" in outcomes["http://localhost"][1]
    console = run.console_text()
    assert "allowed onload 200" in console
    assert "refused onerror 0 Refused to connect" in console
    assert "slow ontimeout 0" in console


def test_values_persist_across_reloads_and_restarts(chromium) -> None:
    body = "const n = GM_getValue('count', 0) + 1; GM_setValue('count', n); GM_deleteValue('gone'); console.log(n);"
    script = userscript(body, "match https://lmarena.ai/*", "grant GM_getValue", "grant GM_setValue",
                        "grant GM_deleteValue")  # fmt: skip

    async def reload(page, run) -> None:
        await run.wait_for(lambda: run.values.get("count") == 1)
        await page.reload()

    first = chromium.run_userscript(script, actions=reload, values={"gone": True})
    second = chromium.run_userscript(script, values=first.values)

    if first.live_values:  # Playwright >= 1.60: the reload saw the value written before it, as in Tampermonkey
        assert (first.console_text(), first.values, second.values) == ("1\n2", {"count": 2}, {"count": 3})
    else:  # older Playwright: documents see the values the run started with
        assert (first.console_text(), first.values, second.values) == ("1\n1", {"count": 1}, {"count": 2})


def test_sandbox_hides_page_window_and_ungranted_api(chromium) -> None:
    probe = """
      console.log('GM_xmlhttpRequest:' + typeof GM_xmlhttpRequest + ' info:' + GM_info.script.version);
      window.fetch = () => Promise.reject(new Error('wrapped'));
    """
    sandboxed = userscript(probe, "match https://lmarena.ai/*", "grant GM_xmlhttpRequest", "run-at document-start")
    unsandboxed = userscript(probe, "match https://lmarena.ai/*", "grant none", "run-at document-start")

    async def click(page, run) -> None:
        await page.click("#retry")
        await page.wait_for_function("document.getElementById('status').textContent.startsWith('retr')")

    kept = chromium.run_userscript(sandboxed, actions=click)
    replaced = chromium.run_userscript(unsandboxed, actions=click)

    assert "GM_xmlhttpRequest:function info:1.2.3" in kept.console_text()
    assert "Hello from fake LMArena" in kept.text  # the page's own fetch was untouched
    assert "GM_xmlhttpRequest:undefined info:1.2.3" in replaced.console_text()
    assert "retry failed: Error: wrapped" in replaced.text


def test_screenshot_renders_fake_page_and_loopback_but_not_internet(chromium, echo, tmp_path) -> None:
    shot = chromium.screenshot("https://lmarena.ai/", tmp_path / "lmarena.png")
    assert (shot.status, shot.title, shot.url) == (200, "LMArena (fake)", "https://lmarena.ai/")
    assert "Retry" in shot.text and shot.page_errors == []
    assert shot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.path.stat().st_size > 5000

    local = chromium.screenshot(echo.url, tmp_path / "echo.png")
    assert (local.status, local.title) == (200, "Echo")

    with pytest.raises(PlaywrightError, match="ERR_NAME_NOT_RESOLVED"):
        chromium.screenshot("https://example.com/", tmp_path / "offline.png")


def test_one_shot_run_userscript_waits_for_run_at(lmarena) -> None:
    body = "console.log('ready=' + document.readyState + ' button=' + !!document.querySelector('#retry'));"
    script = userscript(body, "match https://*.lmarena.ai/*", "run-at document-end")

    run = run_userscript(script, "https://canary.lmarena.ai/c/1", lmarena_port=lmarena.port)

    assert run.console_text() == "ready=interactive button=true"
    assert run.executions == ["https://canary.lmarena.ai/c/1"] and run.unsupported_grants == []


def _order_probe(name: str, *meta: str) -> str:
    """Return a userscript that appends its name to the page's window.__ran."""
    page = "(typeof unsafeWindow !== 'undefined' ? unsafeWindow : window)"
    body = f"{page}.__ran = ({page}.__ran || []).concat([{name!r}]);"
    header = (f"name {name}", "match https://lmarena.ai/*", "run-at document-start", *meta)
    lines = "".join(f"// @{line}\n" for line in header)
    return f"// ==UserScript==\n{lines}// ==/UserScript==\n{body}\n"


def test_companions_run_before_and_after_the_script_and_keep_their_place(chromium) -> None:
    main = _order_probe("main", "grant GM_setValue", "grant unsafeWindow").replace(
        ".concat(['main']);", ".concat(['main']); GM_setValue('runs', (window.__ran || []).length);"
    )
    orders = []

    async def actions(page, run) -> None:
        orders.append(await page.evaluate("window.__ran"))
        await run.wait_for(lambda: "runs" in run.values)  # the main script was installed again with its values
        await page.reload()
        orders.append(await page.evaluate("window.__ran"))

    run = chromium.run_userscript(
        main, "https://lmarena.ai/", actions, before=[_order_probe("first")], after=[_order_probe("last")]
    )
    assert orders == [["first", "main", "last"]] * 2
    assert run.companion_runs == [("first", "https://lmarena.ai/"), ("last", "https://lmarena.ai/")] * 2
    assert run.executions == ["https://lmarena.ai/"] * 2
    with pytest.raises(ValueError, match="@grant none only"):
        chromium.run_userscript(main, after=[_order_probe("sandboxed", "grant GM_setValue")])
