"""b64_json downloads: only public https:// images, one deadline, a size cap, image types, failures as 502s.

The model's answer names the URL the gateway downloads, and a client's prompt can dictate that answer: the fake
bridge answers with whatever `image_url` is set to, as a model echoing `![x](http://127.0.0.1:PORT/secret)` would.
"""

from __future__ import annotations

import base64
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.upstreams.httpserver import FakeUpstream, UpstreamHandler

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)
SECRET = b"internal-secret-7f3a9c"
DEADLINE = 0.3  # GATEWAY_IMAGE_FETCH_TIMEOUT in the deadline tests
DRIP_GAP = 0.05  # a byte every 50 ms: each read is quick, only an overall deadline stops the download


class Host(FakeUpstream):
    """A loopback HTTP server answering every request with `answer(handler)`; a PNG by default."""

    def __init__(self, answer: Callable[[UpstreamHandler], None] | None = None) -> None:
        super().__init__()
        self.answer = answer or (lambda h: h.send_body(200, PNG, "image/png"))

    def handle(self, h: UpstreamHandler) -> None:
        self.answer(h)


@pytest.fixture
def internal():
    """An internal service on loopback holding a secret, served as an image so only the address check stops it."""
    with Host(lambda h: h.send_body(200, SECRET, "image/png")) as host:
        yield host


@pytest.fixture
def gateway(serve, openai_for):
    """Return a factory: (served gateway, OpenAI client) with setting overrides."""

    def factory(**overrides):
        server = serve(**overrides)
        return server, openai_for(server)

    return factory


def b64_image(client: openai.OpenAI) -> bytes:
    """Ask for one image as b64_json and return its bytes."""
    result = client.images.generate(model="nano-banana", prompt="a cat", response_format="b64_json")
    return base64.b64decode(result.data[0].b64_json)


def b64_error(client: openai.OpenAI) -> tuple[int, dict, str]:
    """Ask for one image as b64_json, expecting an error; return its status, error object and raw body."""
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.generate(model="nano-banana", prompt="a cat", response_format="b64_json")
    return caught.value.status_code, caught.value.body, caught.value.response.text


def allow(*hosts: FakeUpstream) -> str:
    """Return a GATEWAY_IMAGE_FETCH_ALLOW_HOSTS value naming each server's loopback address and port."""
    return ",".join(host.url.split("://", 1)[1] for host in hosts)


# 1. Where the gateway will not go


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/secret",  # not https
        "https://127.0.0.1:{port}/secret",
        "https://localhost:{port}/secret",  # a name for a loopback address
        "https://2130706433:{port}/secret",  # 127.0.0.1 as one number
        "https://[::ffff:127.0.0.1]:{port}/secret",  # IPv4-mapped IPv6
        "https://[::1]:{port}/secret",
        "https://[0:0::1]:{port}/secret",
        "ftp://127.0.0.1:{port}/secret",
    ],
)
def test_internal_server_named_by_the_answer_is_refused_and_never_reached(gateway, bridge, internal, url):
    _, client = gateway()
    bridge.image_url = url.format(port=internal.url.rsplit(":", 1)[1])
    status, error, raw = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_refused"), error
    assert "https://" in error["message"] and "GATEWAY_IMAGE_FETCH_ALLOW_HOSTS" in error["message"]
    assert SECRET.decode() not in raw and base64.b64encode(SECRET).decode() not in raw
    assert internal.accepted == 0  # refused before connecting: not even a port scan learns anything


def test_refusal_tells_the_openai_client_not_to_generate_again(serve, bridge, internal):
    server = serve()
    bridge.image_url = internal.url + "/secret"
    with openai.OpenAI(base_url=server.url + "/v1", api_key=CLIENT_KEY, max_retries=2, timeout=20) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            client.images.generate(model="nano-banana", prompt="a cat", response_format="b64_json")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len([r for r in bridge.requests if r.path == "/v1/chat/completions"]) == 1  # the SDK did not retry


def test_the_gateways_own_endpoints_are_refused(gateway, bridge):
    server, client = gateway()
    bridge.image_url = server.url + "/health"
    status, error, raw = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_refused")
    assert 'b64_json"' not in raw


def test_loopback_address_is_named_in_the_refusal(gateway, bridge, internal):
    _, client = gateway()
    bridge.image_url = f"https://localhost:{internal.url.rsplit(':', 1)[1]}/secret"
    status, error, _ = b64_error(client)
    assert status == 502 and "resolves to a loopback address" in error["message"]


# 2. GATEWAY_IMAGE_FETCH_ALLOW_HOSTS


@pytest.mark.parametrize(
    ("entry", "url_host"),
    [("127.0.0.1:{port}", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("localhost:{port}", "localhost")],
)
def test_allow_listed_host_is_fetched_over_http(gateway, bridge, entry, url_host):
    with Host() as image:
        port = image.url.rsplit(":", 1)[1]
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=entry.format(port=port))
        bridge.image_url = f"http://{url_host}:{port}/img/{{:04d}}.png?size=1"
        assert b64_image(client) == PNG
    sent = image.requests[-1]
    assert sent.path == "/img/0001.png?size=1"
    assert sent.headers["host"] == f"{url_host}:{port}"
    assert sent.headers["accept-encoding"] == "identity"


def test_allow_list_names_one_port_and_not_its_neighbours(gateway, bridge, internal):
    with Host() as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image))
        bridge.image_url = internal.url + "/secret"
        status, error, raw = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_refused")
    assert SECRET.decode() not in raw and internal.accepted == 0


# 3. Redirects: each hop is checked like the first


def redirect_to(location: str) -> Callable[[UpstreamHandler], None]:
    def answer(h: UpstreamHandler) -> None:
        if h.route_path == "/final.png":
            h.send_body(200, PNG, "image/png")
        else:
            h.send_body(302, b"", "text/plain", headers=[("location", location)])

    return answer


def test_redirect_to_a_port_not_allow_listed_is_refused(gateway, bridge, internal):
    with Host(redirect_to(internal.url + "/secret")) as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image))
        bridge.image_url = image.url + "/start.png"
        status, error, raw = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_refused")
    assert SECRET.decode() not in raw and internal.accepted == 0
    assert [r.path for r in image.requests] == ["/start.png"]


def test_redirect_within_an_allowed_host_is_followed(gateway, bridge):
    with Host(redirect_to("/final.png")) as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image))
        bridge.image_url = image.url + "/start.png"
        assert b64_image(client) == PNG
    assert [r.path for r in image.requests] == ["/start.png", "/final.png"]


def test_redirect_loop_is_refused_after_three_hops(gateway, bridge):
    with Host(redirect_to("/again.png")) as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image))
        bridge.image_url = image.url + "/start.png"
        status, error, _ = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_refused")
    assert "redirected more than 3 times" in error["message"]
    assert len(image.requests) == 4


# 4. One deadline for the whole download


def drip_head(h: UpstreamHandler) -> None:
    h.write(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\nx-pad: ")
    for _ in range(400):  # 20 s of header, a byte at a time
        h.wait(DRIP_GAP)
        h.write(b"a")
    h.write(b"\r\ncontent-length: %d\r\n\r\n%s" % (len(PNG), PNG))


def drip_body(h: UpstreamHandler) -> None:
    body = PNG * 20
    h.send_head(200, [("content-type", "image/png"), ("content-length", str(len(body)))])
    for byte in body:  # 20 s of body, a byte at a time
        h.wait(DRIP_GAP)
        h.write(bytes([byte]))


def stall_body(h: UpstreamHandler) -> None:
    h.send_head(200, [("content-type", "image/png"), ("content-length", "1000")])
    h.write(PNG)
    h.wait(20)


class TLSDrip:
    """A loopback TCP server answering a TLS client with a record header, then one byte of the record at a time."""

    def __init__(self) -> None:
        self.hung_up = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(5)
                try:
                    self.request.recv(4096)  # the ClientHello
                    self.request.sendall(b"\x16\x03\x03\x3e\x80")  # a handshake record 16,000 bytes long
                    for _ in range(400):  # 20 s of it, a byte at a time
                        time.sleep(DRIP_GAP)
                        self.request.sendall(b"\x00")
                except OSError:
                    outer.hung_up.set()

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> TLSDrip:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tls_handshake_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline(gateway, bridge):
    with TLSDrip() as drip:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=drip.url[8:], GATEWAY_IMAGE_FETCH_TIMEOUT=DEADLINE)
        bridge.image_url = drip.url + "/slow.png"
        status, error, _ = b64_error(client)
        assert drip.hung_up.wait(timeout=5)  # the gateway hung up rather than wait for the 20 s of handshake
    assert (status, error["code"]) == (502, "image_download_failed")
    assert f"within {DEADLINE:g} s (GATEWAY_IMAGE_FETCH_TIMEOUT)" in error["message"]


@pytest.mark.parametrize("answer", [drip_head, drip_body, stall_body], ids=["drip-head", "drip-body", "stall"])
def test_slow_image_host_is_cut_off_at_the_deadline(gateway, bridge, answer):
    with Host(answer) as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image), GATEWAY_IMAGE_FETCH_TIMEOUT=DEADLINE)
        bridge.image_url = image.url + "/slow.png"
        status, error, _ = b64_error(client)
        # The gateway hung up rather than waiting for the 20 s the server would have taken.
        assert image.wait_until(lambda: image.disconnects, timeout=5)
    assert (status, error["code"]) == (502, "image_download_failed")
    assert f"within {DEADLINE:g} s (GATEWAY_IMAGE_FETCH_TIMEOUT)" in error["message"]


# 5. What the answer must be: an image, not too large, over HTTP that holds together


def test_non_image_content_type_is_refused_and_not_passed_on(gateway, bridge):
    with Host(lambda h: h.send_body(200, SECRET, "text/html; charset=utf-8")) as page:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(page))
        bridge.image_url = page.url + "/index.html"
        status, error, raw = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_failed")
    assert "text/html, not an image" in error["message"]
    assert base64.b64encode(SECRET).decode() not in raw


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_image_over_20_mb_is_refused(gateway, bridge, declared):
    big = PNG + bytes(20 * 1024 * 1024)

    def answer(h: UpstreamHandler) -> None:
        if declared:
            h.send_body(200, big, "image/png")
            return
        h.start_stream(content_type="image/png")
        for start in range(0, len(big), 1024 * 1024):
            h.write_chunk(big[start : start + 1024 * 1024])
        h.end_stream()

    with Host(answer) as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image))
        bridge.image_url = image.url + "/big.png"
        status, error, _ = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_failed")
    assert "larger than 20971520 bytes" in error["message"]


def drop_mid_body(h: UpstreamHandler) -> None:
    h.send_head(200, [("content-type", "image/png"), ("content-length", "1000")])
    h.write(PNG)
    h.drop_connection()


def garbage_status_line(h: UpstreamHandler) -> None:
    h.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    h.drop_connection()


def hang_up_at_once(h: UpstreamHandler) -> None:
    h.drop_connection()


@pytest.mark.parametrize(
    ("answer", "error_name"),
    [(drop_mid_body, "ProtocolError"), (garbage_status_line, "BadStatusLine"), (hang_up_at_once, "RemoteDisconnected")],
    ids=["incomplete-body", "garbage-status-line", "no-answer"],
)
def test_broken_http_is_a_502_with_a_code(gateway, bridge, answer, error_name):
    with Host(answer) as image:
        _, client = gateway(GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=allow(image))
        bridge.image_url = image.url + "/broken.png"
        status, error, raw = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_failed")
    assert f"broke off the download ({error_name})" in error["message"]
    assert "Traceback" not in raw


def test_non_image_data_url_is_refused(gateway, bridge):
    _, client = gateway()
    bridge.image_url = "data:text/html;base64," + base64.b64encode(SECRET).decode()
    status, error, _ = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_failed")


# 6. https: connected to the address checked, the certificate checked against the URL's host name


EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # made in ms, where RSA took 2 s


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """Write a private CA (ca.pem) and two certificates it signs: for localhost (named.*) and 127.0.0.1 only (ip.*)."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", *EC_KEY, "-days", "2", "-subj", "/CN=Image Test CA", "-keyout", "ca.key",
             "-out", "ca.pem", cwd=folder)  # fmt: skip
    for name, san in (("named", "DNS:localhost"), ("ip", "IP:127.0.0.1")):
        _openssl("req", *EC_KEY, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)  # fmt: skip
    return folder


def tls_host(pki: Path, name: str, server_names: list[str]) -> Host:
    """Return an https image host (not started) with certificate `name`, noting the SNI names clients send."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    context.sni_callback = lambda _sock, server_name, _context: server_names.append(server_name)
    host = Host()
    host.tls = context
    return host


def test_https_image_comes_from_the_checked_address_with_the_urls_host_name(gateway, bridge, pki):
    names: list[str] = []
    with tls_host(pki, "named", names) as image:
        port = image.url.rsplit(":", 1)[1]
        _, client = gateway(
            GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=f"localhost:{port}", GATEWAY_UPSTREAM_CA_FILE=str(pki / "ca.pem")
        )
        bridge.image_url = f"https://localhost:{port}/img.png"
        assert b64_image(client) == PNG
    assert names == ["localhost"]  # SNI: the URL's host, though the connection went to 127.0.0.1
    assert image.requests[-1].headers["host"] == f"localhost:{port}"


def test_https_certificate_must_name_the_urls_host_not_the_address(gateway, bridge, pki):
    with tls_host(pki, "ip", []) as image:
        port = image.url.rsplit(":", 1)[1]
        _, client = gateway(
            GATEWAY_IMAGE_FETCH_ALLOW_HOSTS=f"localhost:{port}", GATEWAY_UPSTREAM_CA_FILE=str(pki / "ca.pem")
        )
        bridge.image_url = f"https://localhost:{port}/img.png"
        status, error, _ = b64_error(client)
    assert (status, error["code"]) == (502, "image_download_failed")
    assert "TLS handshake" in error["message"] and "not trusted" in error["message"]
    assert image.requests == []
