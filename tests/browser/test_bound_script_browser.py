"""A script generated for one bridge, run in headless Chromium: its session is bound there and chats reach that tab."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.browser.test_userscript_browser import click_and_wait
from tests.conftest import ADMIN_KEY
from tests.upstreams.fake_bridge import FakeBridge

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TAB_KEY = "sk-lmab-tab-b"


@pytest.fixture
def tab_b():
    """The bridge that drives the browser tab: the only place its session's chats may go."""
    with FakeBridge(api_key=TAB_KEY, chunk_delay=0.001, reply="from tab B") as fake:
        yield fake


def test_script_for_bridge_b_binds_its_session_and_chats_reach_b(live, chromium, lmarena, tab_b, bridge, openai_for):
    form = {
        "session_name": "tab-b",
        "domains": "lmarena.ai",
        "format": "raw",
        "heartbeat": "10",
        "bridge_base_url": tab_b.url,
        "bridge_api_key": TAB_KEY,
    }
    script = requests.post(f"{live.url}/userscript/advanced-generate", data=form, headers=ADMIN, timeout=10).text
    assert TAB_KEY not in script
    run = chromium.run_userscript(script, "https://lmarena.ai/", click_and_wait("#retry"))
    assert run.page_errors == []

    listed = requests.get(f"{live.url}/session/lmarena.ai/tab-b", headers=ADMIN, timeout=10).json()["session"]
    assert (listed["bridge_base_url"], listed["bridge_api_key_set"]) == (tab_b.url, True)
    assert (listed["session_id"], listed["message_id"]) == (lmarena.session_id, lmarena.message_id)

    client = openai_for(live).with_options(default_headers={"X-Session-Name": "tab-b"})
    answer = client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "from tab B"
    chats = [r for r in tab_b.requests if r.path == "/v1/chat/completions"]
    assert [r.headers["authorization"] for r in chats] == [f"Bearer {TAB_KEY}"]
    assert not [r for r in bridge.requests if r.path == "/v1/chat/completions"]

    # The script's own token cannot move its session: a leaked copy points the gateway nowhere new.
    token = json.loads(re.search(r"const CONFIG = (\{.*\});", script).group(1))["token"]
    body = {
        "domain": "lmarena.ai",
        "session_name": "tab-b",
        "session_id": lmarena.session_id,
        "message_id": lmarena.message_id,
        "bridge_base_url": bridge.url,
    }
    moved = requests.post(
        f"{live.url}/session/register", json=body, headers={"X-Registration-Token": token}, timeout=10
    )
    assert moved.status_code == 403
    after = requests.get(f"{live.url}/session/lmarena.ai/tab-b", headers=ADMIN, timeout=10).json()["session"]
    assert after["bridge_base_url"] == tab_b.url
