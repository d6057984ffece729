"""The gateway deployed as cPanel does it: Apache 2.4 + mod_passenger, app root owned by the app user, SetEnv.

One Apache serves the module at `/` (the project's cpanel/htaccess in place, "Compress all content" on); the sub-URI
test starts its own at `/gw`. The app reaches the fake bridge on 127.0.0.1; everything stays on loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from tests.upstreams.fake_bridge import FakeBridge

from .apache import REPO, wait_until

pytestmark = pytest.mark.deploy

BRIDGE_KEY = "sk-lmab-deploy"
CLIENT_KEY = "sk-gw-deploy-1"
ADMIN_KEY = "sk-admin-deploy"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
REPLY = "Hello from the real bridge"  # the fake bridge's words, 0.2 s apart when streamed


def settings(bridge) -> dict[str, str]:
    """Return the Environment variables of cPanel's Setup Python App (Apache SetEnv lines)."""
    return {
        "LMARENA_BRIDGE_BASE_URL": bridge.url,
        "LMARENA_BRIDGE_API_KEY": BRIDGE_KEY,
        "LMARENA_BRIDGE_TIMEOUT": "10",
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "GATEWAY_CONCURRENT_SESSIONS_LIMIT": "1000",
        "GATEWAY_SSE_KEEPALIVE_SECONDS": "1",
        "GATEWAY_HEALTH_CACHE_SECONDS": "1",
    }


@pytest.fixture(scope="module")
def deploy_bridge():
    """A fake LMArenaBridge in this process whose stream chunks come 0.2 s apart; the Apache-run app reaches it."""
    fake = FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.2, response_delay=0.01, hang_seconds=1)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def site(deployment, deploy_bridge):
    """The gateway at / of a private Apache; client keys come from the app root's .env, as cpanel/deploy.sh does."""
    served = deployment.site(env=settings(deploy_bridge), pool_size=4)
    served.write_dotenv({"GATEWAY_API_KEYS": CLIENT_KEY})
    with served:
        yield served


@pytest.fixture
def gateway(site):
    """The official OpenAI client pointed at the deployed gateway."""
    client = openai.OpenAI(base_url=site.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    yield client
    client.close()


def proc_uid(pid: int) -> int:
    """Return the real uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_health_reports_bridge_and_store(site, deploy_bridge):
    response = requests.get(site.url + "/health", timeout=30)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok", body
    assert body["auth"] == "api_key"
    assert body["upstreams"]["lmarena_bridge"]["ok"] is True
    assert body["upstreams"]["lmarena_bridge"]["base_url"] == deploy_bridge.url
    assert body["session_store"]["ok"] is True


def test_models_and_chat_through_openai_client(gateway, deploy_bridge):
    models = {model.id for model in gateway.models.list()}
    reply = gateway.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])

    assert {"gpt-5", "gemini-2.5-pro"} <= models
    assert reply.choices[0].message.content == REPLY
    # The key came to the app through Apache's SetEnv and went on to the bridge.
    assert deploy_bridge.requests[-1].headers["authorization"] == f"Bearer {BRIDGE_KEY}"


def dashboard_count(url: str, field: str = "total-requests") -> int:
    page = requests.get(url + "/dashboard", headers=ADMIN, timeout=30)
    found = re.search(rf'id="{field}">([\d,]+)', page.text)
    assert found, f"{page.status_code}: {page.text[-3000:]}"
    return int(found.group(1).replace(",", ""))


def test_dashboard_counts_requests_served_by_every_process(site, gateway):
    before = dashboard_count(site.url)
    hi = [{"role": "user", "content": "hi"}]
    with ThreadPoolExecutor(4) as pool:  # spread over Passenger's processes
        list(pool.map(lambda _: gateway.chat.completions.create(model="gpt-5", messages=hi), range(8)))
    # Other processes write their events from a background thread within a second or so.
    wait_until(lambda: dashboard_count(site.url) >= before + 8, 15, "8 more requests on the dashboard")
    assert dashboard_count(site.url) == before + 8


def test_unknown_path_and_missing_key_are_openai_errors(site):
    missing = requests.get(site.url + "/no/such/path", timeout=30)
    no_key = requests.get(site.url + "/v1/models", timeout=30)

    assert missing.status_code == 404
    assert missing.headers["Content-Type"].startswith("application/json")
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"


def test_app_runs_as_app_user_in_app_root_and_writes_storage(site, deployment):
    created = requests.post(
        site.url + "/session/register",
        headers=ADMIN,
        json={
            "domain": "lmarena.ai",
            "session_name": "owner-check",
            "session_id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
        },
        timeout=30,
    )
    pids = site.app_pids()
    sessions = site.app_root / "storage" / "sessions.json"

    assert created.status_code in (200, 201), created.text
    assert pids, "no process runs in the app root"
    assert set(site.served_by()) <= set(pids), "a Passenger app process runs outside the app root"
    assert {proc_uid(pid) for pid in pids} == {deployment.user.uid}
    assert sessions.stat().st_uid == deployment.user.uid
    assert "owner-check" in sessions.read_text()


def stream_arrivals(site) -> tuple[dict[str, str], list[float], str]:
    """Stream a chat with the openai SDK (it sends Accept-Encoding: gzip); return headers, arrival times, text."""
    client = openai.OpenAI(base_url=site.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    arrivals: list[float] = []
    text = []
    try:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-5", messages=[{"role": "user", "content": "count"}], stream=True
        ) as response:
            headers = dict(response.headers)
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
                    text.append(chunk.choices[0].delta.content)
    finally:
        client.close()
    return headers, arrivals, "".join(text)


def test_stream_arrives_incrementally_with_compress_all_content(site):
    assert "SetEnv no-gzip 1" in (site.app_dir / ".htaccess").read_text(), "cpanel/htaccess lost its no-gzip rule"

    headers, arrivals, text = stream_arrivals(site)

    assert text == REPLY
    assert "content-encoding" not in headers
    assert len(arrivals) == len(REPLY.split())
    # The bridge sends a word every 0.2 s: they must arrive spread out, not together.
    assert arrivals[-1] - arrivals[0] > 0.5, [round(t - arrivals[0], 3) for t in arrivals]


def test_stream_without_no_gzip_rule_arrives_in_one_lump(site):
    """Prove the test above can tell: without the .htaccess rule mod_deflate holds the stream back."""
    shipped = (site.app_dir / ".htaccess").read_text()
    site.write_htaccess("".join(line for line in shipped.splitlines(True) if "no-gzip" not in line))
    try:
        headers, arrivals, text = stream_arrivals(site)
    finally:
        site.write_htaccess(shipped)

    assert text == REPLY
    assert headers.get("content-encoding") == "gzip"
    assert arrivals[-1] - arrivals[0] < 0.1, [round(t - arrivals[0], 3) for t in arrivals]


def smoke_check(site) -> subprocess.CompletedProcess:
    """Run `python -m app check` on the deployed gateway, from a laptop's point of view (this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "app", "check", site.url, "--key", CLIENT_KEY, "--admin-key", ADMIN_KEY],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_smoke_check_passes_with_the_htaccess_rules(site):
    assert "SetEnv no-gzip 1" in (site.app_dir / ".htaccess").read_text()

    done = smoke_check(site)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "  ok    stream    in pieces: 5 over " in done.stdout  # the bridge's five words, 0.2 s apart
    assert "  ok    sessions  " in done.stdout and "every check passed" in done.stdout


def test_smoke_check_finds_the_lump_compress_all_content_makes(site):
    shipped = (site.app_dir / ".htaccess").read_text()
    site.write_htaccess("".join(line for line in shipped.splitlines(True) if "no-gzip" not in line))
    try:
        done = smoke_check(site)
    finally:
        site.write_htaccess(shipped)

    assert done.returncode == 1
    assert "  FAIL  stream    arrived in one lump: 5 piece(s) within " in done.stdout
    assert "stream, compressed (gzip)\n" in done.stdout  # mod_deflate's doing
    assert "Compress all content" in done.stdout and "SetEnv no-gzip 1\n" in done.stdout
    assert "  ok    chat      " in done.stdout and "1 check(s) failed" in done.stdout


def test_register_concurrently_across_processes_keeps_every_session(site):
    threads, per_thread = 8, 40
    before = site.served_by()
    barrier = threading.Barrier(threads, timeout=30)

    def register(worker: int) -> list[int]:
        statuses = []
        with requests.Session() as http:
            barrier.wait()
            for n in range(per_thread):
                body = {
                    "domain": "lmarena.ai",
                    "session_name": f"load-{worker}-{n}",
                    "session_id": str(uuid.uuid4()),
                    "message_id": str(uuid.uuid4()),
                }
                statuses.append(
                    http.post(site.url + "/session/register", headers=ADMIN, json=body, timeout=30).status_code
                )
        return statuses

    with ThreadPoolExecutor(threads) as pool:
        statuses = [status for result in pool.map(register, range(threads)) for status in result]
    after = site.served_by()
    listed = requests.get(site.url + "/session/list?domain=lmarena.ai", headers=ADMIN, timeout=30).json()
    stored = json.loads((site.app_root / "storage" / "sessions.json").read_text())

    expected = {f"load-{w}-{n}" for w in range(threads) for n in range(per_thread)}
    assert statuses == [201] * (threads * per_thread)
    assert expected <= {session["session_name"] for session in listed["data"]}
    assert expected <= set(re.findall(r"load-\d+-\d+", json.dumps(stored)))
    busy = {pid for pid, count in after.items() if count > before.get(pid, 0)}
    assert len(busy) > 1, f"one process served everything: {before} -> {after}"
    assert len(after) <= site.pool_size


def test_restart_txt_reloads_dotenv(site):
    new_key = "sk-gw-deploy-2"
    old_pids = set(site.app_pids())

    def answers(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return requests.get(site.url + "/v1/models", headers=headers, timeout=30).status_code

    site.write_dotenv({"GATEWAY_API_KEYS": new_key})
    try:
        assert answers(CLIENT_KEY) == 200  # .env is read at start-up only
        site.restart_app()
        wait_until(lambda: answers(new_key) == 200, 30, "the restarted app to take the new key", interval=0.2)
        assert answers(CLIENT_KEY) == 401
        assert not old_pids & set(site.app_pids()), "old processes survived the restart"
    finally:
        site.write_dotenv({"GATEWAY_API_KEYS": CLIENT_KEY})
        site.restart_app()
        wait_until(lambda: answers(CLIENT_KEY) == 200, 30, "the app to take the old key back", interval=0.2)


def test_sub_uri_serves_and_links_under_it(deployment, deploy_bridge):
    with deployment.site(base_uri="/gw", env={**settings(deploy_bridge), "GATEWAY_API_KEYS": CLIENT_KEY}) as gw:
        assert gw.url.endswith("/gw")
        root = f"http://127.0.0.1:{gw.port}"
        health = requests.get(gw.url + "/health", timeout=30)
        index = requests.get(gw.url + "/", timeout=30)
        outside = requests.get(root + "/health", timeout=30)
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
        with client:
            models = {model.id for model in client.models.list()}
        script = requests.get(
            gw.url + "/userscript/generate",
            params={"session_name": "a", "format": "raw"},
            headers=ADMIN,
            timeout=30,
        )
        browser = requests.Session()
        signed_in = browser.post(
            gw.url + "/dashboard/login", data={"admin_key": ADMIN_KEY}, allow_redirects=False, timeout=30
        )
        dashboard = browser.get(gw.url + "/dashboard", timeout=30)

    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert index.json()["openai_base_url"] == root + "/gw/v1"
    assert outside.status_code == 404 and "error" not in outside.text  # Apache's, not the app's: outside /gw
    assert "gpt-5" in models
    assert script.status_code == 200, script.text
    assert script.headers["Content-Type"].startswith("text/javascript")
    download = re.search(r"^// @downloadURL\s+(\S+)$", script.text, re.M).group(1)
    config = json.loads(re.search(r"const CONFIG = (\{.*\});$", script.text, re.M).group(1))
    assert download.startswith(root + "/gw/userscript/") and download.count("/gw") == 1
    assert config["gateway_url"] == root + "/gw"
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/gw/dashboard"
    assert "Path=/gw/dashboard" in signed_in.headers["Set-Cookie"]
    assert dashboard.status_code == 200 and "Requests over time" in dashboard.text
    assert 'action="/gw/dashboard/logout"' in dashboard.text


def test_logs_hold_apache_start_and_app_stderr(site):
    assert "resuming normal operations" in site.error_log()
    assert re.search(r"^App \d+ output: \S+ \S+ (INFO|WARNING) app[.:]", site.passenger_log(), re.M)


def test_an_open_gateway_under_a_sub_uri_refuses_cross_site_writes_and_rebound_names(deployment, deploy_bridge):
    """Where Passenger differs from make run: the sub-URI (the CSRF cookie's path) and Apache passing Host on."""
    env = {**settings(deploy_bridge), "GATEWAY_ADMIN_KEY": ""}
    registration = {
        "domain": "lmarena.ai",
        "session_name": "team-a",
        "session_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "message_id": "4fa85f64-5717-4562-b3fc-2c963f66afa7",
        "bridge_base_url": "http://127.0.0.1:9",
    }
    with deployment.site(base_uri="/gw", env=env) as gw:
        forged = requests.post(
            gw.url + "/session/register",
            data=json.dumps(registration),
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
            timeout=30,
        )
        rebound = requests.get(gw.url + "/session/list", headers={"Host": "rebind.attacker.example"}, timeout=30)
        listed = requests.get(gw.url + "/session/list", timeout=30)
        browser = requests.Session()
        page = browser.get(gw.url + "/userscript/generate", timeout=30)
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
        form = {"session_name": "team-a", "format": "raw"}
        made = browser.post(gw.url + "/userscript/generate", data={**form, "csrf_token": token}, timeout=30)
        forged_form = requests.post(gw.url + "/userscript/generate", data={**form, "csrf_token": token}, timeout=30)

    assert forged.status_code == 403 and forged.json()["error"]["type"] == "permission_error"
    assert rebound.status_code == 421 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert "Path=/gw" in page.headers["Set-Cookie"] and "SameSite=Strict" in page.headers["Set-Cookie"]
    assert made.status_code == 200 and "const CONFIG" in made.text
    assert forged_form.status_code == 403  # the token without its browser's cookie
