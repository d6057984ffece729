"""The dashboard in real headless Chromium: sign in through the form, then check the charts are really drawn."""

from __future__ import annotations

import openai
import pytest
from PIL import Image

from tests.browser.harness import Chromium
from tests.conftest import ADMIN_KEY

HI = [{"role": "user", "content": "Say hello"}]
BLUE, RED, GREEN = (0x25, 0x63, 0xEB), (0xDC, 0x26, 0x26), (0x05, 0x96, 0x69)  # ok bars, error bars, p50 line


@pytest.fixture
def chromium():
    with Chromium() as browser:
        yield browser


def pixels(path, colour, tolerance=40) -> int:
    """Return how many pixels of the PNG are within `tolerance` (per channel) of `colour`."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        return sum(
            count
            for count, pixel in rgb.getcolors(maxcolors=rgb.width * rgb.height)
            if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
        )


def sign_in_and_capture_charts(tmp_path):
    async def actions(page):
        await page.fill("#admin_key", ADMIN_KEY)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#chart-requests")
        await page.locator("#chart-requests").screenshot(path=str(tmp_path / "requests.png"))
        await page.locator("#chart-latency").screenshot(path=str(tmp_path / "latency.png"))

    return actions


def test_signed_in_dashboard_draws_both_charts(live, openai_client, bridge, chromium, tmp_path):
    for _ in range(3):
        openai_client.chat.completions.create(model="gpt-5", messages=HI)
    list(openai_client.chat.completions.create(model="gpt-5", messages=HI, stream=True))
    bridge.no_browser = True
    with pytest.raises(openai.APIStatusError):
        openai_client.chat.completions.create(model="gpt-5", messages=HI)

    shot = chromium.screenshot(
        f"{live.url}/dashboard", tmp_path / "dashboard.png", actions=sign_in_and_capture_charts(tmp_path)
    )

    assert shot.status == 200 and shot.url == f"{live.url}/dashboard"
    assert "Requests over time" in shot.text and "Latency over time" in shot.text
    assert "No requests in this window" not in shot.text
    # Bars and lines really painted: coloured pixels in each chart's own screenshot.
    assert pixels(tmp_path / "requests.png", BLUE) > 50
    assert pixels(tmp_path / "requests.png", RED) > 10
    assert pixels(tmp_path / "latency.png", GREEN) > 0 or pixels(tmp_path / "latency.png", (0xD9, 0x77, 0x06)) > 0
    # Nothing blocked by the CSP, nothing fetched from anywhere but the gateway.
    # (The sign-in page itself comes with a 401, which Chromium logs as a failed load.)
    errors = [m.text for m in shot.console if m.type == "error" and "status of 401" not in m.text]
    assert shot.page_errors == [] and errors == []
    assert all(url.startswith(live.url) for url in shot.requested), shot.requested
    assert shot.path.stat().st_size > 20_000


def test_an_idle_gateway_shows_empty_charts(live, chromium, tmp_path):
    shot = chromium.screenshot(
        f"{live.url}/dashboard", tmp_path / "idle.png", actions=sign_in_and_capture_charts(tmp_path)
    )
    assert shot.status == 200
    assert shot.text.count("No requests in this window") == 2
    assert pixels(tmp_path / "requests.png", BLUE) == 0 and pixels(tmp_path / "requests.png", RED) == 0


def test_a_wrong_key_stays_on_the_sign_in_form(live, chromium, tmp_path):
    async def actions(page):
        await page.fill("#admin_key", "sk-not-it")
        await page.click("button[type=submit]")
        await page.wait_for_selector(".error-box")

    shot = chromium.screenshot(f"{live.url}/dashboard", tmp_path / "refused.png", actions=actions)
    assert shot.status == 401
    assert "That is not the admin key." in shot.text and "Requests over time" not in shot.text
