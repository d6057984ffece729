"""The HTTP side of the harness's GM_xmlhttpRequest: made from Python, like Tampermonkey makes it outside the page."""

from __future__ import annotations

import http.client
import ipaddress
import ssl
from typing import Any
from urllib.parse import urlsplit

MAX_SECONDS = 15.0  # cap on any one request, whatever `timeout` the script asked for
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) tests.browser harness (GM_xmlhttpRequest)"


def is_lmarena(host: str) -> bool:
    """Return whether `host` is lmarena.ai or one of its subdomains."""
    return host == "lmarena.ai" or host.endswith(".lmarena.ai")


def is_loopback(host: str) -> bool:
    """Return whether `host` is localhost or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def perform(request: dict[str, Any], lmarena_port: int | None) -> dict[str, Any]:
    """Make one GM_xmlhttpRequest; return its outcome: kind load/error/timeout plus what the page callbacks get.

    Only loopback hosts are reached, and lmarena hosts go to the fake on `lmarena_port`, as Chromium's
    host-resolver-rules send them: the tests never touch the internet.
    """
    url = request["url"]
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https"):
        return {"kind": "error", "error": f"unsupported URL scheme {parts.scheme!r}"}
    secure = parts.scheme == "https"
    address, port = host, parts.port or (443 if secure else 80)
    if is_lmarena(host) and lmarena_port:
        address, port = "127.0.0.1", lmarena_port
    elif not is_loopback(host):
        return {"kind": "error", "error": f"harness: {host} is not loopback (tests stay off the internet)"}
    timeout = min(request.get("timeout", 0) / 1000 or MAX_SECONDS, MAX_SECONDS)
    if secure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the fake lmarena's throwaway certificate
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(address, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    headers = {"Host": parts.netloc.rpartition("@")[2], "User-Agent": USER_AGENT, "Accept": "*/*"}
    for name, value in request.get("headers", {}).items():
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()} | {name: value}
    data = request.get("data")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(request["method"], target, body=None if data is None else data.encode(), headers=headers)
        response = conn.getresponse()
        text = response.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")
        head = "".join(f"{name.lower()}: {value}\r\n" for name, value in response.getheaders())
        return {"kind": "load", "status": response.status, "statusText": response.reason, "responseText": text,
                "responseHeaders": head, "finalUrl": url}  # fmt: skip
    except TimeoutError:
        return {"kind": "timeout", "error": f"timed out after {timeout:g} s"}
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return {"kind": "error", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()
