"""Userscript metadata, match patterns, @connect rules and the init script that runs a userscript like Tampermonkey."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HEADER = re.compile(r"^\s*//\s*==UserScript==\s*$(.*?)^\s*//\s*==/UserScript==\s*$", re.M | re.S)
META_LINE = re.compile(r"^\s*//\s*@([\w:.-]+)(?:\s+(.*?))?\s*$")
MATCH_PATTERN = re.compile(r"^(\*|https?|wss?|file|ftp|urn)://(\*|\*\.[^/*:]+|[^/*:]*)(:(?:\*|\d+))?(/.*)$")
RUN_AT = ("document-start", "document-body", "document-end", "document-idle", "context-menu")

# A pattern travels to the page as (regex source, flags) and must mean the same to Python's re and a JS RegExp.
Regex = tuple[str, str]


@dataclass(frozen=True)
class Metadata:
    """The `// ==UserScript==` block: repeated keys are lists, in order of appearance."""

    name: str
    version: str
    matches: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    exclude_matches: tuple[str, ...] = ()
    grants: tuple[str, ...] = ()
    connects: tuple[str, ...] = ()
    run_at: str = "document-idle"
    noframes: bool = False
    raw: dict[str, list[str]] = field(default_factory=dict)
    header: str = ""

    @property
    def sandboxed(self) -> bool:
        """Return whether Tampermonkey would run the script in its sandbox (any @grant other than none)."""
        return any(grant != "none" for grant in self.grants)

    def url_patterns(self) -> tuple[list[Regex], list[Regex], list[Regex]]:
        """Return the @match, @include and @exclude(-match) patterns as regexes."""
        excludes = [pattern_regex(p) for p in self.excludes] + [match_regex(p) for p in self.exclude_matches]
        return [match_regex(p) for p in self.matches], [pattern_regex(p) for p in self.includes], excludes

    def runs_on(self, url: str) -> bool:
        """Return whether the script runs on `url`: a @match or @include matches it and no @exclude does."""
        matches, includes, excludes = self.url_patterns()
        url = url.split("#", 1)[0]
        hit = any(_search(rx, url) for rx in matches + includes)
        return hit and not any(_search(rx, url) for rx in excludes)


def parse_metadata(source: str) -> Metadata:
    """Parse the metadata block of a userscript; raise ValueError if it has none or a bad @match/@run-at."""
    block = HEADER.search(source)
    if block is None:
        raise ValueError("no // ==UserScript== ... // ==/UserScript== block")
    raw: dict[str, list[str]] = {}
    for line in block.group(1).splitlines():
        found = META_LINE.match(line)
        if found:
            raw.setdefault(found[1], []).append(found[2] or "")
    run_at = (raw.get("run-at") or ["document-idle"])[-1]
    if run_at not in RUN_AT:
        raise ValueError(f"unknown @run-at {run_at!r}")
    meta = Metadata(
        name=(raw.get("name") or [""])[0],
        version=(raw.get("version") or [""])[0],
        matches=tuple(raw.get("match", ())),
        includes=tuple(raw.get("include", ())),
        excludes=tuple(raw.get("exclude", ())),
        exclude_matches=tuple(raw.get("exclude-match", ())),
        # Missing @grant is treated as `@grant none`, what current Tampermonkey does for new scripts.
        grants=tuple(raw.get("grant", ())) or ("none",),
        connects=tuple(c for value in raw.get("connect", ()) for c in value.split()),
        run_at=run_at,
        noframes="noframes" in raw,
        raw=raw,
        header=block.group(0),
    )
    meta.url_patterns()  # fail early on a pattern Tampermonkey would reject
    return meta


def match_regex(pattern: str) -> Regex:
    """Translate a Chrome/Tampermonkey @match pattern (`https://*.host/*`, `<all_urls>`) into a regex.

    `*.host` also matches `host` itself; without an explicit port any port matches; the path covers the query.
    """
    if pattern == "<all_urls>":
        return r"^(?:https?|wss?|ftp|file|urn)://", ""
    parts = MATCH_PATTERN.match(pattern)
    if parts is None:
        raise ValueError(f"invalid @match pattern {pattern!r}")
    scheme, host, port, path = parts.groups()
    scheme_rx = "https?" if scheme == "*" else scheme
    if host == "*":
        host_rx = r"[^/:]*"
    elif host.startswith("*."):
        host_rx = r"(?:[^/:]*\.)?" + re.escape(host[2:])
    else:
        host_rx = re.escape(host)
    port_rx = r"(?::\d+)?" if port in (None, ":*") else re.escape(port)
    return f"^{scheme_rx}://{host_rx}{port_rx}{_glob(path)}$", ""


def pattern_regex(pattern: str) -> Regex:
    """Translate an @include/@exclude value: `/regex/flags`, or a glob where `*` is any text."""
    regex = re.fullmatch(r"/(.+)/([a-z]*)", pattern)
    if regex:
        re.compile(regex[1])
        return regex[1], regex[2].replace("g", "")
    return f"^{_glob(pattern)}$", ""


def _glob(text: str) -> str:
    return ".*".join(re.escape(piece) for piece in text.split("*"))


def _search(rx: Regex, url: str) -> bool:
    return re.search(rx[0], url, re.I if "i" in rx[1] else 0) is not None


def connect_allowed(connects: tuple[str, ...], url: str, page_url: str) -> bool:
    """Return whether @connect lets GM_xmlhttpRequest reach `url` from a script running on `page_url`.

    A domain also allows its subdomains; `self` is the page's host; `localhost` and IP addresses match exactly;
    `*` allows everything (Tampermonkey asks the user then; the harness says yes).
    """
    host = (urlsplit(url).hostname or "").lower()
    page_host = (urlsplit(page_url).hostname or "").lower()
    for rule in (c.lower() for c in connects):
        if rule == "*" or (rule == "self" and host == page_host):
            return True
        if host == rule or (not _is_ip(rule) and host.endswith("." + rule)):
            return True
    return False


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


GM_API = {"GM_xmlhttpRequest", "GM_getValue", "GM_setValue", "GM_deleteValue", "GM_listValues", "GM_addStyle",
          "GM_log", "GM_registerMenuCommand", "GM_notification", "GM.xmlHttpRequest", "GM.getValue", "GM.setValue",
          "GM.deleteValue", "GM.listValues", "GM_info", "GM.info", "unsafeWindow", "none"}  # fmt: skip


@functools.cache
def _shim() -> str:
    return Path(__file__).with_name("gm_shim.js").read_text(encoding="utf-8")


def build_init_script(meta: Metadata, source: str, values: dict[str, Any], token: str, bindings: dict[str, str]) -> str:
    """Return the init script that runs `source` as Tampermonkey would, in the frames its patterns select."""
    matches, includes, excludes = meta.url_patterns()
    info = {
        "script": {"name": meta.name, "version": meta.version, "namespace": (meta.raw.get("namespace") or [""])[0],
                   "description": (meta.raw.get("description") or [""])[0], "grant": list(meta.grants),
                   "matches": list(meta.matches), "includes": list(meta.includes), "excludes": list(meta.excludes),
                   "connects": list(meta.connects), "run-at": meta.run_at},
        "scriptMetaStr": meta.header, "scriptHandler": "Tampermonkey", "version": "5.3.3",
    }  # fmt: skip
    config = {"token": token, "bindings": bindings, "matches": matches, "includes": includes, "excludes": excludes,
              "noframes": meta.noframes, "values": values, "info": info, "grants": list(meta.grants),
              "sandboxed": meta.sandboxed, "runAt": meta.run_at}  # fmt: skip
    factory = f"function (__tmHarnessScope) {{ with (__tmHarnessScope) {{ return function () {{\n{source}\n}}; }} }}"
    return f"{_shim()}({json.dumps(config)}, {factory});\n//# sourceURL=userscript-{token}.js\n"
