"""/dashboard: admin sign-in, what the page shows after real requests through the gateway, and its headers."""

from __future__ import annotations

import re
import time
from html import unescape

import openai
import pytest

from tests.conftest import ADMIN_KEY
from tests.conftest import MESSAGE_ID as MID
from tests.conftest import SESSION_ID as SID
from tests.helpers.forms import post_form
from tests.upstreams.script import Status

HI = [{"role": "user", "content": "Say hello"}]


def text(response) -> str:
    """Return the page's text as a reader sees it: no tags, single spaces."""
    bare = re.sub(r"<[^>]+>", "", re.sub(r"<style>.*?</style>", "", response.get_data(as_text=True), flags=re.S))
    return " ".join(unescape(bare).split())


def row(response, table: str, first_cell: str) -> list[str]:
    """Return the cells of the row of `table` whose first cell is first_cell."""
    html = response.get_data(as_text=True)
    body = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in #{table}")


def sign_in(client, key: str = ADMIN_KEY, base_url: str | None = None, **form):
    return client.post("/dashboard/login", data={"admin_key": key, **form}, base_url=base_url)


def test_without_the_admin_key_it_asks_for_it_and_shows_nothing(traffic):
    response = traffic.get("/dashboard")
    assert response.status_code == 401
    assert 'name="admin_key"' in response.get_data(as_text=True)
    assert "team-a" not in text(response) and "gpt-5" not in text(response)
    assert traffic.get("/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_wrong_key_is_refused_without_a_cookie(traffic, caplog):
    response = sign_in(traffic, "sk-admin-wrong")
    assert response.status_code == 401
    assert "not the admin key" in text(response)
    assert "gateway_dashboard=" not in response.headers.get("Set-Cookie", "")
    assert "sk-admin-wrong" not in caplog.text
    assert post_form(traffic, "/dashboard", "/dashboard/login", {"admin_key": ""}).status_code == 401


def test_signing_in_sets_a_strict_httponly_cookie_and_shows_the_page(traffic):
    response = sign_in(traffic, window="24h")
    assert response.status_code == 303
    assert response.headers["Location"] == "/dashboard?window=24h"
    cookie = response.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=43200"):
        assert attribute in cookie
    assert ADMIN_KEY not in cookie
    page = traffic.get("/dashboard?window=24h")
    assert page.status_code == 200
    assert "Requests over time" in text(page) and "Sign out" in text(page)


def test_the_page_counts_the_real_requests(traffic):
    sign_in(traffic)
    page = traffic.get("/dashboard")
    html = page.get_data(as_text=True)
    assert re.search(r'id="total-requests">4<', html)
    assert re.search(r'id="total-errors">1 ', html)
    cells = row(page, "summary", "lmarena_bridge")
    assert cells[1:5] == ["gpt-5", "4", "1", "25.0 %"]
    assert int(cells[5]) >= 0 and cells[7] != "—"  # p50 latency, and the stream's time to first byte
    session = row(page, "sessions", "lmarena.ai")
    assert session[1:3] == ["team-a", "active"]
    assert session[4] == "—"  # registered with the admin key, without saying where the ids came from
    assert session[7:9] == ["1", "0"]  # the one request sent with X-Session-Name, and no errors
    assert session[10:13] == ["—", "0", "—"]  # no userscript: no capture, no script errors
    assert re.search(r'id="session-counts">1 / 1<', html)


def test_the_charts_hold_the_requests(traffic):
    sign_in(traffic)
    html = traffic.get("/dashboard").get_data(as_text=True)
    requests_svg = html.split('id="chart-requests"', 1)[1].split("</svg>", 1)[0]
    bars = re.findall(r'<rect class="(ok|error)"[^>]*height="([\d.]+)"', requests_svg)
    assert {kind for kind, _ in bars} == {"ok", "error"}
    # All four requests fall in the last minute's bar (or two, across a minute boundary): 3 ok, 1 error.
    titles = re.findall(r"(\d+) requests, (\d+) errors</title>", requests_svg)
    assert sum(int(n) for n, _ in set(titles)) == 4 and sum(int(e) for _, e in set(titles)) == 1
    latency_svg = html.split('id="chart-latency"', 1)[1].split("</svg>", 1)[0]
    assert "<polyline" in latency_svg or "<circle" in latency_svg
    assert "No requests in this window" not in requests_svg


def test_the_admin_key_in_a_header_works_for_scripts(traffic, admin):
    assert traffic.get("/dashboard", headers=admin).status_code == 200
    assert traffic.get("/dashboard", headers={"X-Admin-Key": ADMIN_KEY}).status_code == 200


def test_forged_expired_and_stale_cookies_are_refused(make_app, traffic):
    sign_in(traffic)
    good = traffic.get_cookie("gateway_dashboard", path="/dashboard").value
    expires, signature = good.split(".")
    for forged in (f"{int(time.time()) + 9999}.{signature}", f"{int(time.time()) - 1}.{signature}", "garbage", ""):
        traffic.set_cookie("gateway_dashboard", forged, path="/dashboard")
        assert traffic.get("/dashboard").status_code == 401, forged
    # A new admin key (same storage, so the same secret) signs every browser out.
    other = make_app(GATEWAY_ADMIN_KEY="sk-admin-rotated").test_client()
    other.set_cookie("gateway_dashboard", good, path="/dashboard")
    assert other.get("/dashboard").status_code == 401


def test_sign_out_forgets_the_cookie(traffic):
    sign_in(traffic)
    response = post_form(traffic, "/dashboard", "/dashboard/logout", {})
    assert response.status_code == 303
    assert "gateway_dashboard=;" in response.headers["Set-Cookie"]
    assert traffic.get("/dashboard").status_code == 401


def test_html_headers_forbid_scripts_framing_and_caching(traffic, admin):
    for response in (traffic.get("/dashboard"), traffic.get("/dashboard", headers=admin)):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert "<script" not in response.get_data(as_text=True)
        assert not re.search(r'(src|href)="(https?:)?//', response.get_data(as_text=True))  # nothing from elsewhere


def test_a_bad_window_is_a_400_that_still_shows_the_last_hour(traffic, admin):
    response = traffic.get("/dashboard?window=5s", headers=admin)
    assert response.status_code == 400
    assert "'window' must be 60 s to 366 d" in text(response)
    assert "Requests over time" in text(response)
    assert traffic.get("/dashboard?window=7d", headers=admin).status_code == 200


def test_upstream_error_text_is_escaped(live, openai_client, bridge, admin):
    bridge.script(*[Status(500, body={"detail": "<img src=x onerror=alert(1)> broke"})] * 4)
    with pytest.raises(openai.APIStatusError):
        openai_client.chat.completions.create(model="gpt-5", messages=HI)
    page = live.app.test_client().get("/dashboard", headers=admin)
    html = page.get_data(as_text=True)
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; broke" in html
    assert row(page, "providers", "lmarena_bridge")[3] == "closed"


def test_sessions_table_shows_the_userscripts_last_capture_and_errors(traffic, admin):
    sent = {"domain": "lmarena.ai", "session_name": "team-a"}
    assert traffic.post("/analytics/event", json={**sent, "kind": "capture"}, headers=admin).status_code == 202
    for status in (500, "<b>401</b>"):
        error = {**sent, "kind": "error", "detail": {"step": "register", "status": status}}
        assert traffic.post("/analytics/event", json=error, headers=admin).status_code == 202
    page = traffic.get("/dashboard", headers=admin)
    cells = row(page, "sessions", "lmarena.ai")
    assert cells[1] == "team-a"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", cells[10])  # last capture
    assert cells[11] == "2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d: step=register status=<b>401</b>", cells[12])
    assert "&lt;b&gt;401&lt;/b&gt;" in page.get_data(as_text=True)  # the script's words are shown, never run


def test_with_analytics_off_it_still_shows_providers_and_sessions(make_app, admin):
    client = make_app(GATEWAY_ENABLE_SESSION_ANALYTICS=False).test_client()
    client.post(
        "/session/register",
        headers=admin,
        json={
            "domain": "canary.lmarena.ai",
            "session_name": "night",
            "session_id": SID,
            "message_id": MID,
            "ids_source": "bridge_job",
        },
    )
    page = client.get("/dashboard", headers=admin)
    assert page.status_code == 200
    assert "Analytics are off" in text(page) and "Requests over time" not in text(page)
    assert row(page, "sessions", "canary.lmarena.ai")[1] == "night"
    assert row(page, "sessions", "canary.lmarena.ai")[4] == "bridge_job"
    assert row(page, "providers", "lmarena_bridge")[3] == "closed"


def test_an_open_gateway_shows_the_page_with_a_warning(make_app):
    client = make_app(GATEWAY_ADMIN_KEY="").test_client()
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert "No GATEWAY_ADMIN_KEY is set" in text(page)
    # Nothing to sign in to, and a post without the page's CSRF token is refused like any forged one.
    forged = client.post("/dashboard/login", data={})
    assert forged.status_code == 403 and forged.get_json()["error"]["code"] == "csrf_failed"


def test_refresh_is_bounded_and_can_be_turned_off(traffic, admin):
    def refresh(query: str) -> str | None:
        html = traffic.get(f"/dashboard{query}", headers=admin).get_data(as_text=True)
        found = re.search(r'http-equiv="refresh" content="(\d+)"', html)
        return found.group(1) if found else None

    assert refresh("") == "30"
    assert refresh("?refresh=1") == "5"
    assert refresh("?refresh=0") is None
    assert refresh("?refresh=junk") == "30"


def test_sessions_table_is_capped_and_says_so(app, client, admin, monkeypatch):
    from app.api import dashboard

    monkeypatch.setattr(dashboard, "MAX_SESSION_ROWS", 3)
    for i in range(5):
        client.post(
            "/session/register",
            headers=admin,
            json={"domain": "lmarena.ai", "session_name": f"s{i}", "session_id": SID, "message_id": MID},
        )
    page = client.get("/dashboard", headers=admin)
    assert "The 3 most recent of 5." in text(page)
    assert row(page, "sessions", "lmarena.ai")[1] == "s4"  # most recently registered first


def test_the_cookie_is_secure_when_browsers_use_https(make_app):
    client = make_app(GATEWAY_PUBLIC_URL="https://gw.example.com").test_client()
    assert "; Secure" in sign_in(client).headers["Set-Cookie"]
    plain = make_app().test_client()
    assert "; Secure" not in sign_in(plain).headers["Set-Cookie"]
    assert "; Secure" in sign_in(plain, base_url="https://localhost").headers["Set-Cookie"]
