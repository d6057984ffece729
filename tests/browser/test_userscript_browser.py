"""The generated userscript, end to end, in real headless Chromium on a loopback page served as https://lmarena.ai/."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def generate(gateway_url: str, name: str = "team-a", **params) -> str:
    params = {"session_name": name, "domains": "lmarena.ai", "format": "raw", "heartbeat": "10", **params}
    response = requests.get(f"{gateway_url}/userscript/advanced-generate", params=params, headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def sessions(gateway_url: str) -> dict[tuple[str, str], dict]:
    data = requests.get(f"{gateway_url}/session/list", headers=ADMIN, timeout=10).json()["data"]
    return {(s["domain"], s["session_name"]): s for s in data}


def registered(run) -> list:
    return [r for r in run.gm_requests if r.url.endswith("/session/register") and r.status in (200, 201)]


def click_and_wait(button: str, count: int = 1):
    async def actions(page, run):
        await page.click(button)
        await run.wait_for(lambda: len(registered(run)) >= count, timeout=10)
        await page.wait_for_function(
            "document.getElementById('lmarena-gateway-badge')?.dataset.state === 'ok'", timeout=5000
        )

    return actions


@pytest.mark.parametrize("button", ["#retry", "#retry-xhr", "#retry-request"])
def test_retry_click_registers_the_session_with_the_gateway(live, chromium, lmarena, button):
    run = chromium.run_userscript(generate(live.url), "https://lmarena.ai/", click_and_wait(button))
    assert run.page_errors == []
    session = sessions(live.url)[("lmarena.ai", "team-a")]
    assert (session["session_id"], session["message_id"]) == (lmarena.session_id, lmarena.message_id)
    request = registered(run)[0]
    assert request.headers["X-Registration-Token"].startswith("v1.")
    assert ADMIN_KEY not in request.headers.values()
    assert lmarena.retries, "the page's own request still went through"
    assert "registered" in run.text
    reports = [r for r in run.gm_requests if r.url.endswith("/analytics/event")]
    assert [(r.json["kind"], r.status) for r in reports] == [("capture", 202)]


def test_a_second_retry_updates_the_ids(live, chromium, lmarena):
    async def actions(page, run):
        await page.click("#retry")
        await run.wait_for(lambda: len(registered(run)) >= 1, timeout=10)
        lmarena.new_ids()
        await page.reload()
        await page.click("#retry")
        await run.wait_for(
            lambda: len(registered(run)) >= 1 and registered(run)[-1].json["message_id"] == lmarena.message_id,
            timeout=10,
        )

    chromium.run_userscript(generate(live.url), "https://lmarena.ai/", actions)
    assert sessions(live.url)[("lmarena.ai", "team-a")]["message_id"] == lmarena.message_id


def test_script_for_canary_does_nothing_on_lmarena_ai(live, chromium):
    script = generate(live.url, domains="canary.lmarena.ai")

    async def actions(page, run):
        await page.click("#retry")
        await page.wait_for_timeout(500)

    run = chromium.run_userscript(script, "https://lmarena.ai/", actions)
    assert run.gm_requests == []
    assert sessions(live.url) == {}
    on_canary = chromium.run_userscript(script, "https://canary.lmarena.ai/", click_and_wait("#retry"))
    assert registered(on_canary)
    assert ("canary.lmarena.ai", "team-a") in sessions(live.url)


def test_heartbeats_keep_the_session_seen(live, chromium):
    script = generate(live.url).replace('"heartbeat_seconds": 10', '"heartbeat_seconds": 0.3')

    async def actions(page, run):
        await page.click("#retry")
        await run.wait_for(
            lambda: any(r.url.endswith("/session/heartbeat") and r.status == 200 for r in run.gm_requests), timeout=10
        )

    chromium.run_userscript(script, "https://lmarena.ai/", actions)
    session = sessions(live.url)[("lmarena.ai", "team-a")]
    assert session["last_seen_at"] > session["updated_at"]


def test_ids_persist_across_a_browser_restart(live, chromium, lmarena):
    script = generate(live.url, persist="1")
    first = chromium.run_userscript(script, "https://lmarena.ai/", click_and_wait("#retry"))
    requests.delete(f"{live.url}/session/lmarena.ai/team-a", headers=ADMIN, timeout=10)

    async def no_click(page, run):
        await run.wait_for(lambda: registered(run), timeout=10)

    second = chromium.run_userscript(script, "https://lmarena.ai/", no_click, values=first.values)
    assert registered(second)[0].json["session_id"] == lmarena.session_id
    assert registered(second)[0].json["ids_source"] == "retry"  # remembered with the ids
    assert ("lmarena.ai", "team-a") in sessions(live.url)


def test_gateway_down_shows_an_error_badge_and_retries(chromium, serve):
    server = serve()
    script = generate(server.url, auto_retry="1")
    server.stop()

    async def actions(page, run):
        await page.click("#retry")
        await page.wait_for_function(
            "document.getElementById('lmarena-gateway-badge')?.dataset.state === 'error'", timeout=10000
        )

    run = chromium.run_userscript(script, "https://lmarena.ai/", actions)
    assert [r.status for r in run.gm_requests if r.url.endswith("/session/register")][0] is None
    assert run.page_errors == []


def test_install_page_renders(live, chromium, tmp_path):
    shot = chromium.screenshot(f"{live.url}/userscript/generate", tmp_path / "install.png")
    assert shot.status == 200
    assert "LMArena Gateway userscript" in shot.text and "Session name" in shot.text
    assert shot.path.stat().st_size > 10_000
    assert shot.page_errors == []
