"""The gateway's userscript beside LMArenaBridge's own in one tab (a stand-in for it), in real headless Chromium."""

from __future__ import annotations

import uuid

import pytest

from tests.browser.bridge_standin import bridge_script, run_job, state
from tests.browser.fake_lmarena import ANSWER_LINES, FakeLMArena, answer_text
from tests.browser.harness import Chromium
from tests.browser.test_userscript_browser import generate, registered, sessions

STAND_IN = "LMArena API Bridge (test stand-in)"
ANSWER = b"".join(ANSWER_LINES).decode()
# Tampermonkey runs ours at document-start and the bridge's at document-end, so the bridge's wrapper ends up outside
# ours; a bridge script set to run first puts ours outside. Either way both must see every request.
ORDERS = {
    "bridge_outside": {"after": [bridge_script("document-end")]},
    "gateway_outside": {"before": [bridge_script("document-start")]},
}


@pytest.fixture
def lmarena():
    # Chunks 0.1 s apart, so a job that reads the body as it streams sees several of them.
    with FakeLMArena(chunk_delay=0.1) as fake:
        yield fake


@pytest.fixture
def chromium(lmarena):
    with Chromium(lmarena.port) as browser:
        yield browser


def new_ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def register_calls(run) -> list[tuple[str | None, str, str]]:
    """Return (ids_source, session_id, message_id) of every registration the script sent, whatever its answer."""
    calls = [r.json for r in run.gm_requests if r.url.endswith("/session/register")]
    return [(c.get("ids_source"), c["session_id"], c["message_id"]) for c in calls]


def logged(run, text: str) -> int:
    return sum(1 for m in run.console if m.text.startswith("[lmarena-gateway]") and text in m.text)


async def retry_and_wait(page, button: str = "#retry", via: str = "fetch") -> None:
    """Click one of the page's Retry buttons and wait until the page showed the streamed answer."""
    await page.click(button)
    await page.wait_for_function(f"document.getElementById('status').textContent === 'retried via {via}'")


@pytest.mark.parametrize("order", ORDERS)
def test_users_retry_passes_both_wrappers_and_registers_as_retry(live, chromium, lmarena, order):
    seen = {}

    async def actions(page, run):
        await page.evaluate("window.__bridgeStandIn.activateCapture()")
        await retry_and_wait(page)
        await run.wait_for(lambda: registered(run), timeout=10)
        seen.update(await state(page))

    run = chromium.run_userscript(generate(live.url), "https://lmarena.ai/", actions, **ORDERS[order])
    assert run.page_errors == []
    assert run.companion_runs == [(STAND_IN, "https://lmarena.ai/")]
    assert (seen["outermost"], seen["wrappedNative"]) == (order == "bridge_outside", order == "gateway_outside")
    page_ids = (lmarena.session_id, lmarena.message_id)
    # The bridge's wrapper saw the click (and took the ids in its capture mode), and so did ours.
    assert [(c["session_id"], c["message_id"]) for c in seen["captured"]] == [page_ids]
    assert register_calls(run) == [("retry", *page_ids)]
    assert sessions(live.url)[("lmarena.ai", "team-a")]["ids_source"] == "retry"
    # The page's own request went through and its answer was read to the end.
    assert [(r.session_id, r.message_id) for r in lmarena.retries] == [page_ids]
    assert answer_text() in run.text


@pytest.mark.parametrize("order", ORDERS)
def test_bridge_job_registers_its_ids_as_bridge_job_and_streams_to_the_end(live, chromium, lmarena, order):
    job_ids = new_ids()
    seen = {}

    async def actions(page, run):
        # Capture mode on: the bridge's own job must still not be taken as a user's Retry by its wrapper.
        await page.evaluate("window.__bridgeStandIn.activateCapture()")
        seen["job"] = await run_job(page, *job_ids)
        await run.wait_for(lambda: registered(run), timeout=10)
        seen.update(await state(page))

    run = chromium.run_userscript(generate(live.url), "https://lmarena.ai/", actions, **ORDERS[order])
    assert run.page_errors == []
    job = seen["job"]
    assert (job["status"], job["done"], job["error"]) == (200, True, None)
    assert "".join(job["chunks"]) == ANSWER
    assert len(job["chunks"]) >= 2, "the body arrived as it streamed, not in one piece"
    assert job["wrapperPromise"] is True, "the wrapper outside the bridge's returned its promise untouched"
    assert job["flagWhileReading"] is True and seen["flag"] is False
    assert (seen["captured"], seen["captureMode"]) == ([], True)
    assert register_calls(run) == [("bridge_job", *job_ids)]
    session = sessions(live.url)[("lmarena.ai", "team-a")]
    assert (session["session_id"], session["message_id"], session["ids_source"]) == (*job_ids, "bridge_job")
    retry = lmarena.retries[-1]
    assert (retry.method, retry.session_id, retry.message_id) == ("PUT", *job_ids)
    assert retry.content_type == "text/plain;charset=UTF-8"


def test_the_same_ids_are_registered_once(live, chromium, lmarena):
    job_ids = new_ids()

    async def actions(page, run):
        await retry_and_wait(page)
        await run.wait_for(lambda: len(registered(run)) >= 1, timeout=10)
        await retry_and_wait(page, "#retry-xhr", "xhr")
        await run.wait_for(lambda: logged(run, "already registered") >= 1)
        await run_job(page, *job_ids)
        await run.wait_for(lambda: len(registered(run)) >= 2, timeout=10)
        await run_job(page, *job_ids)
        await run.wait_for(lambda: logged(run, "already registered") >= 2)

    script = generate(live.url, debug="1")
    run = chromium.run_userscript(script, "https://lmarena.ai/", actions, after=[bridge_script()])
    assert run.page_errors == []
    page_ids = (lmarena.session_id, lmarena.message_id)
    assert register_calls(run) == [("retry", *page_ids), ("bridge_job", *job_ids)]
    assert len(lmarena.retries) == 4, "every request still reached lmarena.ai"


def test_after_a_bridge_job_only_the_bridges_new_ids_are_registered(live, chromium, lmarena):
    first, second = new_ids(), new_ids()

    async def actions(page, run):
        await run_job(page, *first)
        await run.wait_for(lambda: len(registered(run)) >= 1, timeout=10)
        await retry_and_wait(page)  # the user's click: other ids, which this tab's bridge does not use
        await run.wait_for(lambda: logged(run, "not registering a Retry click") >= 1)
        await run_job(page, *second)  # the bridge was pointed at another conversation
        await run.wait_for(lambda: len(registered(run)) >= 2, timeout=10)

    script = generate(live.url, debug="1")
    run = chromium.run_userscript(script, "https://lmarena.ai/", actions, after=[bridge_script()])
    assert run.page_errors == []
    assert register_calls(run) == [("bridge_job", *first), ("bridge_job", *second)]
    session = sessions(live.url)[("lmarena.ai", "team-a")]
    assert (session["session_id"], session["message_id"], session["ids_source"]) == (*second, "bridge_job")
    assert answer_text() in run.text  # the click was not registered, but the page's request worked


def test_ids_registered_once_in_the_page_are_not_registered_again(live, chromium, lmarena):
    """The script keeps every pair of ids it registered in this page, not only the last."""
    page_ids, job_ids = (lmarena.session_id, lmarena.message_id), new_ids()

    async def actions(page, run):
        await retry_and_wait(page)
        await run.wait_for(lambda: len(registered(run)) >= 1, timeout=10)
        await run_job(page, *job_ids)
        await run.wait_for(lambda: len(registered(run)) >= 2, timeout=10)
        await run_job(page, *page_ids)  # ids this page registered before, now from the bridge
        await run.wait_for(lambda: logged(run, "already registered") >= 1)

    script = generate(live.url, debug="1")
    run = chromium.run_userscript(script, "https://lmarena.ai/", actions, after=[bridge_script()])
    assert run.page_errors == []
    assert register_calls(run) == [("retry", *page_ids), ("bridge_job", *job_ids)]
