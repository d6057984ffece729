"""`python -m app check`: a live gateway passes; a wrong key, a bridge without a browser and a stream held back fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.smoke_check import main
from tests.conftest import ADMIN_KEY, CLIENT_KEY
from tests.helpers.buffering_proxy import BufferingProxy
from tests.helpers.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CRON = "cron-token-for-the-check"


def check(capsys, url: str, *args: str, environ: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Run the check in this process; return its exit status and each step's report line by name."""
    status = main([url, *args], environ or {})
    out = capsys.readouterr().out
    steps = {line.split()[1]: line.strip() for line in out.splitlines() if line.startswith(("  ok ", "  FAIL "))}
    return status, steps | {"": out}


@pytest.fixture
def gateway(serve):
    return serve(GATEWAY_CRON_TOKEN=CRON)


def test_every_step_passes_against_a_live_gateway(gateway, capsys):
    status, steps = check(capsys, gateway.url, "--key", CLIENT_KEY, "--admin-key", ADMIN_KEY, "--cron-token", CRON)

    assert status == 0, steps[""]
    assert steps["health"].startswith("ok    health    ok, version ")
    assert "chatting with 'gemini-2.5-pro' (the first; --model picks another)" in steps["models"]
    assert "'Hello from the real bridge'" in steps["chat"]
    assert steps["stream"].startswith("ok    stream    5 piece(s) in ")  # the fake bridge's five words
    assert steps["sessions"] == "ok    sessions  0 session(s) registered"
    assert steps["cleanup"].startswith("ok    cleanup   dry run: 0 session(s) older than 30 days would go")
    assert steps[""].endswith("every check passed\n")
    for secret in (CLIENT_KEY, ADMIN_KEY, CRON):
        assert secret not in steps[""]


def test_keys_may_come_from_the_environment(gateway, capsys):
    environ = {"CHECK_KEY": CLIENT_KEY, "CHECK_ADMIN_KEY": ADMIN_KEY, "CHECK_CRON_TOKEN": CRON}
    status, steps = check(capsys, gateway.url, "--model", "gpt-5", environ=environ)
    assert status == 0, steps[""]
    assert "chatting with 'gpt-5'" in steps["models"] and steps["cleanup"].startswith("ok ")


def test_a_wrong_key_fails_with_the_gateways_reason(gateway, capsys):
    status, steps = check(capsys, gateway.url, "--key", "sk-wrong", "--admin-key", "nope", "--cron-token", "nope")

    assert status == 1
    assert steps["health"].startswith("ok ")
    assert steps["models"].startswith("FAIL  models    401 invalid_api_key: ")
    assert steps["chat"] == "FAIL  chat      not tried: no model to ask for (--model names one)"
    assert steps["sessions"].startswith("FAIL  sessions  401 invalid_api_key: ")
    assert steps["cleanup"].startswith("FAIL  cleanup   401 invalid_cron_token: ")
    assert steps[""].endswith("5 check(s) failed\n")


def test_a_bridge_without_a_browser_fails_chat_and_stream(gateway, bridge, capsys):
    bridge.no_browser = True
    status, steps = check(capsys, gateway.url, "--key", CLIENT_KEY, "--model", "gpt-5")

    assert status == 1
    assert steps["models"].startswith("ok ")
    assert steps["chat"].startswith("FAIL  chat      503 bridge_no_browser: ")
    assert steps["stream"].startswith("FAIL  stream    503 bridge_no_browser: ")
    assert "  skip  sessions  no --admin-key\n  skip  cleanup   no --cron-token\n" in steps[""]


def test_a_model_not_listed_and_a_disabled_cron_endpoint_fail(serve, capsys):
    plain = serve()  # no GATEWAY_CRON_TOKEN: the clean-up endpoint refuses every call
    status, steps = check(capsys, plain.url, "--key", CLIENT_KEY, "--model", "no-such-model", "--cron-token", "x")

    assert status == 1
    assert steps["models"].startswith("FAIL  models    'no-such-model' is not listed (4 models are)")
    assert steps["cleanup"].startswith("FAIL  cleanup   403 cron_disabled: ")


def test_an_unreachable_gateway_stops_after_the_first_step(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    status, steps = check(capsys, url, "--key", CLIENT_KEY)

    assert status == 1
    assert steps["health"].startswith(f"FAIL  health    cannot reach {url}/health: ")
    assert "nothing else tried" in steps[""] and "models" not in steps


def test_something_else_at_the_url_is_named(bridge, capsys):
    # The bridge answers /health with FastAPI's 404: not a gateway (a wrong path, a cPanel error page).
    status, steps = check(capsys, bridge.url, "--key", CLIENT_KEY)
    assert status == 1
    assert steps["health"].startswith('FAIL  health    404, not the gateway\'s answer: b\'{"detail":"Not Found"}\'')


@pytest.mark.slow  # streams of about a second, twice
def test_a_stream_held_back_by_a_proxy_is_a_lump_with_the_fix(gateway, bridge, capsys):
    bridge.chunk_delay = 0.15  # five words over about a second: long enough to tell pieces from a lump
    with BufferingProxy(gateway.url, buffer=True) as held, BufferingProxy(gateway.url, buffer=False) as passed:
        lump_status, lump = check(capsys, held.url, "--key", CLIENT_KEY, "--model", "gpt-5")
        piece_status, pieces = check(capsys, passed.url, "--key", CLIENT_KEY, "--model", "gpt-5")

    assert lump_status == 1
    assert lump["stream"].startswith("FAIL  stream    arrived in one lump: 5 piece(s) within ")
    assert lump["stream"].endswith(" s stream, compressed (gzip)")
    fix = ["SetEnv no-gzip 1", "SetEnv dont-vary 1", "PassengerBufferResponse off"]
    assert '"Optimize Website > Compress all content"' in lump[""]
    assert "".join(f"{' ' * 20}{line}\n" for line in fix) in lump[""]  # the lines to paste, under the step
    assert lump["chat"].startswith("ok ")  # only the stream suffers
    assert piece_status == 0, pieces[""]
    assert pieces["stream"].startswith("ok    stream    in pieces: 5 over ")


@pytest.mark.slow  # its own Python process
def test_python_m_app_check_is_the_command(gateway):
    done = subprocess.run(
        [sys.executable, "-m", "app", "check", gateway.url, "--key", "sk-wrong"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "FAIL  models    401 invalid_api_key" in done.stdout and done.stderr == ""
    usage, unknown = (
        subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        for args in (["check"], ["chek"])
    )
    assert usage.returncode == 2 and "the following arguments are required: url" in usage.stderr
    assert unknown.returncode == 2 and "python -m app check URL --key K" in unknown.stderr
