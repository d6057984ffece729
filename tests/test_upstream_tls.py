"""https:// upstreams: certificates are verified, a private CA can be trusted, and a refusal says why."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BRIDGE_KEY, app_settings, close_app
from tests.upstreams.fake_bridge import DEFAULT_REPLY, FakeBridge

CHAT = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """Write a private CA (ca.pem) and a certificate for 127.0.0.1 signed by it (server.pem, server.key)."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Gateway Test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=folder)  # fmt: skip
    return folder


@pytest.fixture
def tls_bridge(pki):
    """A fake LMArenaBridge serving https:// with the private CA's certificate for 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    fake = FakeBridge(api_key=BRIDGE_KEY, chunk_delay=0.01, response_delay=0.0)
    fake.tls = context
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def make_tls_app(tls_bridge, tmp_path):
    from app import create_app

    apps = []

    def factory(base_url: str = "", **overrides):
        settings = app_settings(base_url or tls_bridge.url, tmp_path / "storage", LMARENA_BRIDGE_TIMEOUT=5)
        apps.append(create_app({**settings, **overrides}))
        return apps[-1]

    yield factory
    for app in apps:
        close_app(app)


def test_private_ca_file_lets_json_and_streams_through_one_connection(make_tls_app, tls_bridge, pki, auth):
    client = make_tls_app(GATEWAY_UPSTREAM_CA_FILE=str(pki / "ca.pem")).test_client()

    answer = client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["choices"][0]["message"]["content"] == DEFAULT_REPLY

    streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth)
    body = streamed.get_data(as_text=True)
    assert streamed.status_code == 200
    assert body.rstrip().endswith("data: [DONE]") and '"upstream_' not in body
    assert tls_bridge.requests[-1].headers["user-agent"].startswith("lmarena-gateway/")
    # The model list, the answer and the stream: one TLS handshake, then the kept-alive connection.
    assert tls_bridge.accepted == 1, tls_bridge.accepted


@pytest.mark.parametrize(
    ("base", "trusted"),
    [
        ("https://127.0.0.1:{port}", False),  # signed by a CA nobody configured
        ("https://localhost:{port}", True),  # trusted CA, but the certificate names 127.0.0.1 only
    ],
)
def test_unverifiable_upstream_is_a_clear_502_and_hears_nothing(make_tls_app, tls_bridge, pki, auth, base, trusted):
    port = tls_bridge.url.rsplit(":", 1)[1]
    extra = {"GATEWAY_UPSTREAM_CA_FILE": str(pki / "ca.pem")} if trusted else {}
    client = make_tls_app(base.format(port=port), **extra).test_client()

    for stream in (False, True):
        answer = client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=auth)
        error = answer.get_json()["error"]
        assert answer.status_code == 502
        assert error["code"] == "upstream_tls_failed"
        assert "certificate is not trusted" in error["message"]
        assert "GATEWAY_UPSTREAM_CA_FILE" in error["message"]
    # Nothing, the bridge key included, went to a server whose certificate failed.
    assert tls_bridge.requests == []


def test_ca_file_setting_must_be_a_readable_file(make_tls_app, tmp_path):
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="GATEWAY_UPSTREAM_CA_FILE"):
        make_tls_app(GATEWAY_UPSTREAM_CA_FILE=str(tmp_path / "missing.pem"))
