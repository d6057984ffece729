"""cpanel/deploy.sh in a fake cPanel home: idempotent, backs up first, keeps secrets; a dry run changes nothing."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY, CLIENT_KEY

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ("GATEWAY_ADMIN_KEY", "GATEWAY_CRON_TOKEN", "GATEWAY_USERSCRIPT_SECRET", "GATEWAY_API_KEYS")
CRON = "cron-token-of-the-deployed-gateway"


def tracked_files() -> list[str]:
    # Tracked files and new ones not ignored: what a deployment of this working tree would upload.
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


@pytest.fixture
def home(tmp_path):
    """A cPanel-like home: the app in ~/lmarena-gateway and its virtualenv where Setup Python App puts it."""
    app_root = tmp_path / "home" / "lmarena-gateway"
    for name in tracked_files():
        target = app_root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    venv = tmp_path / "home" / "virtualenv" / "lmarena-gateway" / "3.11"
    # cPanel creates the virtualenv; this one sees the test's packages so pip has nothing to download.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    return app_root


def deploy(app_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(app_root.parent), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["bash", str(app_root / "cpanel" / "deploy.sh"), *args],
        cwd=app_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def env_file(app_root: Path) -> dict[str, str]:
    pairs = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (app_root / ".env").read_text(), re.M)
    return dict(pairs)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_first_deploy_sets_everything_up(home):
    (home / "storage" / "sessions.json").write_text('{"version": 1, "sessions": {}}')
    result = deploy(home)
    assert result.returncode == 0, result.stdout + result.stderr
    values = env_file(home)
    assert all(len(values[name]) >= 32 for name in SECRETS)
    assert values["GATEWAY_API_KEYS"].startswith("sk-gw-")
    assert mode(home / ".env") == 0o600 and mode(home / "storage") == 0o700
    assert mode(home / "storage" / "sessions.json") == 0o600
    assert len(list((home / "backups").glob("storage-*.tar.gz"))) == 1
    assert (home / "tmp" / "restart.txt").exists()
    assert "the app starts with this configuration" in result.stdout
    cron = next(line for line in result.stdout.splitlines() if "/cron/cleanup" in line)
    assert f"X-Cron-Token: {values['GATEWAY_CRON_TOKEN']}" in cron and cron.startswith("*/30 * * * * curl -fsS -m 60")
    assert values["GATEWAY_ADMIN_KEY"] not in result.stdout  # generated, stored, not printed


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_second_deploy_changes_no_secret_and_keeps_edits(home):
    assert deploy(home).returncode == 0
    (home / ".env").write_text((home / ".env").read_text().replace("LOG_REQUESTS=false", "LOG_REQUESTS=true"))
    first = env_file(home)
    (home / "storage" / "marker").write_text("keep me")
    result = deploy(home)
    assert result.returncode == 0, result.stdout + result.stderr
    second = env_file(home)
    assert second == first
    assert second["LOG_REQUESTS"] == "true"
    assert "generated" not in result.stdout
    assert (home / "storage" / "marker").read_text() == "keep me"
    assert len(list((home / "backups").glob("storage-*.tar.gz"))) >= 1


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_settings_new_in_the_example_are_added_without_touching_others(home):
    (home / ".env").write_text("GATEWAY_ADMIN_KEY=my-own-admin-key-that-is-long-enough\n")
    assert deploy(home).returncode == 0
    values = env_file(home)
    assert values["GATEWAY_ADMIN_KEY"] == "my-own-admin-key-that-is-long-enough"
    assert values["LMARENA_BRIDGE_BASE_URL"] == "http://127.0.0.1:5102"
    assert len(values["GATEWAY_CRON_TOKEN"]) >= 32


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_dry_run_changes_nothing(home):
    (home / "storage" / "sessions.json").write_text('{"version": 1, "sessions": {}}')
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    result = deploy(home, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
    assert "would run: tar -czf" in result.stdout and "would generate GATEWAY_ADMIN_KEY" in result.stdout


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_a_bad_setting_stops_before_restarting(home):
    (home / ".env").write_text("LMARENA_BRIDGE_TIMEOUT=soon\n")
    result = deploy(home)
    assert result.returncode != 0
    assert "LMARENA_BRIDGE_TIMEOUT" in result.stderr
    assert not (home / "tmp" / "restart.txt").exists()


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_deploy_ends_with_the_smoke_check_of_the_url(home, serve):
    gateway = serve(GATEWAY_CRON_TOKEN=CRON)
    keys = f"GATEWAY_API_KEYS={CLIENT_KEY},sk-gw-second\nGATEWAY_ADMIN_KEY={ADMIN_KEY}\nGATEWAY_CRON_TOKEN={CRON}\n"
    (home / ".env").write_text(keys)
    result = deploy(home, "--url", gateway.url)

    assert result.returncode == 0, result.stdout + result.stderr
    report = result.stdout[result.stdout.index(f"checking {gateway.url}") :]
    for step in ("health", "models", "chat", "stream", "sessions", "cleanup"):
        assert f"  ok    {step:9} " in report, step
    assert "every check passed" in report and report.rstrip().endswith("deploy: done")
    assert CLIENT_KEY not in result.stdout and ADMIN_KEY not in result.stdout


@pytest.mark.slow  # a copy of the tree, a virtualenv, deploy.sh
def test_deploy_fails_when_the_smoke_check_fails(home, serve, bridge):
    gateway = serve()
    (home / ".env").write_text(f"GATEWAY_API_KEYS={CLIENT_KEY}\nGATEWAY_ADMIN_KEY={ADMIN_KEY}\n")
    bridge.no_browser = True
    result = deploy(home, "--url", gateway.url)

    assert result.returncode == 1
    assert "  FAIL  chat      503 bridge_no_browser: " in result.stdout
    assert "/cron/cleanup" in result.stdout  # the rest of the deployment still reported
    assert f"deployed, but the check of {gateway.url} failed" in result.stderr


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: run tests/helpers/install-system-deps.sh (make test does)"
    result = subprocess.run(
        [shellcheck, "cpanel/deploy.sh", ".ci/run", "tests/helpers/install-system-deps.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
