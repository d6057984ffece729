"""LMArenaBridge's own files the gateway reads: models.json and config.jsonc."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError

log = logging.getLogger(__name__)

# How often a file's mtime is looked at: often enough to see edits, rarely enough to stay off the hot path.
STAT_INTERVAL = 2.0


def strip_jsonc(text: str) -> str:
    """Return text with // and /* */ comments and trailing commas removed, strings left intact."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch in "]}":
            # Drop a trailing comma before a closing bracket (JSONC allows it, json does not).
            k = len(out) - 1
            while k >= 0 and out[k].isspace():
                k -= 1
            if k >= 0 and out[k] == ",":
                del out[k]
            out.append(ch)
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_jsonc(text: str) -> Any:
    """Parse JSON with comments, as LMArenaBridge's config.jsonc is written."""
    return json.loads(strip_jsonc(text))


@dataclass(frozen=True)
class BridgeModel:
    name: str
    kind: str  # "text" or "image", from the "<uuid>:image" suffix


def parse_models(data: Any) -> dict[str, BridgeModel]:
    """Return models.json entries; raise ValueError when it is not a name -> id object."""
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object of model name -> LMArena model id")
    models = {}
    for name, value in data.items():
        if not isinstance(value, str):
            raise ValueError(f"model {name!r} must map to a string id")
        kind = value.partition(":")[2]
        models[name] = BridgeModel(name, kind or "text")
    return models


class WatchedFile:
    """A parsed file, reloaded when its mtime or size changes; a bad edit keeps the last good copy."""

    def __init__(self, setting: str, path: str, parse: Callable[[str], Any]) -> None:
        self.setting, self.path, self._parse = setting, path, parse
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._signature: tuple[float, int] | None = None
        self._value: Any = None
        self.version = 0  # counts loads: what was built from the value is stale once it changes
        try:
            self._load()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{setting}={path!r} cannot be used: {exc}") from None

    def _load(self) -> None:
        stat = os.stat(self.path)
        with open(self.path, encoding="utf-8-sig") as f:
            value = self._parse(f.read())
        self._value, self._signature = value, (stat.st_mtime, stat.st_size)
        self.version += 1

    @property
    def mtime(self) -> float:
        """Return the mtime of the copy in use."""
        return self._signature[0] if self._signature else 0.0

    @property
    def value(self) -> Any:
        now = time.monotonic()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + STAT_INTERVAL
                stat = os.stat(self.path)
                if (stat.st_mtime, stat.st_size) != self._signature:
                    self._load()
                    log.info("reloaded %s from %s", self.setting, self.path)
            except (OSError, ValueError) as exc:
                log.warning("keeping the last good %s: %s cannot be read: %s", self.setting, self.path, exc)
            finally:
                self._lock.release()
        return self._value


class BridgeFiles:
    """The bridge files named in the settings; each is optional."""

    def __init__(self, models_path: str = "", config_path: str = "") -> None:
        self._models = models_path and WatchedFile(
            "LMARENA_BRIDGE_MODELS_FILE", models_path, lambda text: parse_models(json.loads(text))
        )
        self._config = config_path and WatchedFile("LMARENA_BRIDGE_CONFIG_FILE", config_path, _parse_config)

    @property
    def models(self) -> dict[str, BridgeModel]:
        return self._models.value if self._models else {}

    @property
    def models_version(self) -> int:
        """Return a number that changes whenever models.json is reloaded (picking up an edit first)."""
        if not self._models:
            return 0
        self._models.value  # noqa: B018 - lets the file's own throttled check pick up an edit first
        return self._models.version

    @property
    def config(self) -> dict[str, Any]:
        return self._config.value if self._config else {}

    @property
    def models_mtime(self) -> int:
        """Return models.json's mtime as last loaded (no stat here: this runs on every routed request)."""
        if not self._models:
            return int(time.time())
        self._models.value  # noqa: B018 - lets the file's own throttled check pick up an edit first
        return int(self._models.mtime)


def _parse_config(text: str) -> dict[str, Any]:
    data = parse_jsonc(text)
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    return data
