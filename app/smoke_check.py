"""`python -m app check URL --key K`: try a deployed gateway end to end, and whether its streams arrive in pieces."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import certifi
import urllib3

from .version import __version__

# A stream lasting this long or more whose content all arrives within LUMP_SPREAD seconds came in one lump:
# something between the gateway and the client held it back (cPanel's "Compress all content", mod_deflate).
LUMP_MIN_SECONDS = 0.5
LUMP_SPREAD = 0.05
PROMPT = "Count from 1 to 10, one number per line, and nothing else."
LUMP_FIX = """\
Something between the gateway and this client holds streams back until they end: on cPanel,
"Optimize Website > Compress all content" (mod_deflate). Fix: add these lines, as in cpanel/htaccess,
to the .htaccess of the app's folder:
  SetEnv no-gzip 1
  SetEnv dont-vary 1
  PassengerBufferResponse off"""
INDENT = " " * 18  # under a step's text in the report


class Failed(Exception):
    """A step failed; the message is its report (more lines are indented under the first)."""


class Skipped(Exception):
    """A step was not asked for (its key or token not given)."""


class Gateway:
    """A deployed gateway, called over HTTP(S) with urllib3 (a runtime dependency) and certifi's CAs."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = urllib3.PoolManager(
            ca_certs=certifi.where(), retries=False, timeout=urllib3.Timeout(connect=min(timeout, 15), read=timeout)
        )

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None, stream: bool = False):
        """Send one request; raise Failed when the gateway cannot be reached."""
        headers = {"User-Agent": f"lmarena-gateway-check/{__version__}", **headers}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            return self.http.request(
                method, self.url + path, headers=headers, body=data, preload_content=not stream, redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Failed(f"cannot reach {self.url}{path}: {_reason(exc)}") from None

    def json(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
        """Return a 200 answer's JSON; raise Failed naming the status and the gateway's error otherwise."""
        response = self.call(method, path, headers, body)
        try:
            data = json.loads(response.data)
        except ValueError:
            data = None
        if response.status != 200:
            raise Failed(_refusal(response.status, data, response.data))
        if not isinstance(data, dict):
            raise Failed(f"200 but not JSON from {path}: {response.data[:200]!r}")
        return data


def _reason(exc: Exception) -> str:
    # urllib3 puts the connection object's repr first: "<...HTTPConnection object at 0x..>: Failed to establish..."
    return str(getattr(exc, "reason", None) or exc).split(">: ", 1)[-1]


def _refusal(status: int, data: Any, raw: bytes) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return f"{status} {error.get('code')}: {error.get('message')}"
    return f"{status}, not the gateway's answer: {raw[:200]!r}"


class Check:
    """The steps of a check, each one report line."""

    def __init__(self, gateway: Gateway, key: str, admin_key: str | None, cron_token: str | None, model: str | None):
        self.gateway = gateway
        self.user = {"Authorization": f"Bearer {key}"}
        self.admin_key, self.cron_token, self.model = admin_key, cron_token, model

    def health(self) -> str:
        """GET /health: up, and every upstream and the session store answer."""
        body = self.gateway.json("GET", "/health", {})
        down = [f"{name}: {u.get('error') or 'down'}" for name, u in body.get("upstreams", {}).items() if not u["ok"]]
        if not body.get("session_store", {}).get("ok", True):
            down.append(f"session store: {body['session_store'].get('error')}")
        if body.get("status") != "ok":
            raise Failed(f"{body.get('status')}: " + "; ".join(down))
        return f"ok, version {body.get('version')}, {len(body.get('upstreams', {}))} upstream(s) answer"

    def models(self) -> str:
        """GET /v1/models with the client key; choose the model for the chat (--model, else the first listed)."""
        listed = [m.get("id") for m in self.gateway.json("GET", "/v1/models", self.user).get("data", [])]
        if self.model is not None and self.model not in listed:
            raise Failed(f"{self.model!r} is not listed ({len(listed)} models are)")
        if not listed:
            raise Failed("no model listed: is a bridge reachable from the gateway?")
        note = "" if self.model else " (the first; --model picks another)"
        self.model = self.model or listed[0]
        return f"{len(listed)} listed; chatting with {self.model!r}{note}"

    def chat(self) -> str:
        """POST one chat completion (JSON)."""
        started = time.monotonic()
        body = self._chat_body(stream=False)
        answer = self.gateway.json("POST", "/v1/chat/completions", self.user, body)
        text = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        if not text.strip():
            raise Failed("the answer holds no text")
        return f"{len(text)} characters in {time.monotonic() - started:.1f} s: {text.strip()[:40]!r}"

    def stream(self) -> str:
        """POST one streamed chat, accepting gzip as SDKs do, and time when each piece of content arrives."""
        started = time.monotonic()
        headers = {**self.user, "Accept-Encoding": "gzip, deflate", "Accept": "text/event-stream"}
        response = self.gateway.call("POST", "/v1/chat/completions", headers, self._chat_body(stream=True), True)
        try:
            if response.status != 200:
                raw = response.read()
                raise Failed(_refusal(response.status, _maybe_json(raw), raw))
            arrivals = read_stream(response, started + 2 * self.gateway.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise Failed(f"the stream broke: {_reason(exc)}") from None
        finally:
            response.release_conn()
        lasted = time.monotonic() - started
        encoding = response.headers.get("Content-Encoding")
        compressed = f", compressed ({encoding})" if encoding else ""
        spread = arrivals[-1] - arrivals[0]
        if lasted >= LUMP_MIN_SECONDS and spread <= LUMP_SPREAD:
            raise Failed(
                f"arrived in one lump: {len(arrivals)} piece(s) within {spread * 1000:.0f} ms at the end of a "
                f"{lasted:.1f} s stream{compressed}\n{LUMP_FIX}"
            )
        first = arrivals[0] - started
        if lasted < LUMP_MIN_SECONDS:
            return f"{len(arrivals)} piece(s) in {lasted:.2f} s: too quick to tell pieces from a lump{compressed}"
        return f"in pieces: {len(arrivals)} over {spread:.1f} s, the first after {first:.1f} s{compressed}"

    def sessions(self) -> str:
        """GET /session/list with the admin key."""
        if not self.admin_key:
            raise Skipped("no --admin-key")
        body = self.gateway.json("GET", "/session/list", {"Authorization": f"Bearer {self.admin_key}"})
        return f"{body.get('count')} session(s) registered"

    def cleanup(self) -> str:
        """GET /cron/cleanup?dry_run=1 with the cron token, as the cron line calls it (nothing is removed)."""
        if not self.cron_token:
            raise Skipped("no --cron-token")
        body = self.gateway.json("GET", "/cron/cleanup?dry_run=1", {"X-Cron-Token": self.cron_token})
        if body.get("dry_run") is not True:
            raise Failed(f"the gateway did not take it as a dry run: {json.dumps(body)[:200]}")
        return f"dry run: {body['sessions']['count']} session(s) older than {body['days']:g} days would go"

    def _chat_body(self, stream: bool) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def read_stream(response, deadline: float) -> list[float]:
    """Read an SSE chat stream to `data: [DONE]`; return when each piece of content arrived (time.monotonic)."""
    arrivals: list[float] = []
    buffer = b""
    while time.monotonic() < deadline:
        piece = response.read1(65536)
        if not piece:
            raise Failed(f"the stream ended without data: [DONE] after {len(arrivals)} piece(s) of content")
        now = time.monotonic()
        buffer = (buffer + piece).replace(b"\r\n", b"\n")
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
            if data == b"[DONE]":
                if not arrivals:
                    raise Failed("the stream carried no content")
                return arrivals
            obj = _maybe_json(data) if data else None
            if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
                raise Failed(f"error in the stream: {obj['error'].get('code')}: {obj['error'].get('message')}")
            choices = obj.get("choices") if isinstance(obj, dict) else None
            if choices and isinstance(choices[0], dict) and (choices[0].get("delta") or {}).get("content"):
                arrivals.append(now)
    raise Failed("the stream did not end in time")


def run(check: Check, out: Callable[[str], None]) -> int:
    """Run every step, printing a line each; return the number that failed."""
    steps = [check.health, check.models, check.chat, check.stream, check.sessions, check.cleanup]
    failed = 0
    for step in steps:
        name = step.__name__
        if step in (check.chat, check.stream) and check.model is None:
            out(f"  FAIL  {name:9} not tried: no model to ask for (--model names one)")
            failed += 1
            continue
        try:
            out(f"  ok    {name:9} {step()}")
        except Skipped as exc:
            out(f"  skip  {name:9} {exc}")
        except Failed as exc:
            out(f"  FAIL  {name:9} " + str(exc).replace("\n", "\n" + INDENT))
            failed += 1
            if name == "health" and str(exc).startswith("cannot reach"):
                out("  (nothing else tried: the gateway cannot be reached)")
                return failed
    return failed


def main(argv: list[str], environ: Mapping[str, str] = os.environ) -> int:
    """Check the gateway at URL; print a short report; return 0 when every step passed, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m app check",
        description="Try a deployed gateway: health, models, a chat, a stream (in pieces, not one lump), "
        "the session list (--admin-key) and a dry-run clean-up (--cron-token).",
    )
    # Keys may come from the environment instead, which keeps them out of the process list (cpanel/deploy.sh).
    parser.add_argument("url", help="the gateway's base URL, e.g. https://your.domain/gw")
    parser.add_argument("--key", default=environ.get("CHECK_KEY"), help="a client key (or $CHECK_KEY)")
    parser.add_argument(
        "--admin-key", default=environ.get("CHECK_ADMIN_KEY"), help="the admin key (or $CHECK_ADMIN_KEY)"
    )
    parser.add_argument(
        "--cron-token", default=environ.get("CHECK_CRON_TOKEN"), help="the cron token (or $CHECK_CRON_TOKEN)"
    )
    parser.add_argument("--model", help="the model to chat with (default: the first /v1/models lists)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds each request may take (default 120)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error("URL must start with http:// or https://")
    if not args.key:
        parser.error("a client key is needed: --key or $CHECK_KEY")
    check = Check(Gateway(args.url, args.timeout), args.key, args.admin_key, args.cron_token, args.model)
    print(f"checking {check.gateway.url}", flush=True)
    failed = run(check, lambda line: print(line, flush=True))
    print("every check passed" if not failed else f"{failed} check(s) failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
