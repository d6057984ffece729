"""Settings: defaults < .env < environment < test_config, each validated with an error naming it."""
# Over 300 lines: the one table of every setting, kept whole so it reads as the reference for .env.example.

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from dotenv import dotenv_values
from urllib3.util import parse_url

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting has a value the gateway cannot start with."""


def _text(value: Any) -> str:
    return str(value).strip()


def split_url(url: str) -> SplitResult:
    """Return urlsplit(url); raise ValueError for a port outside 0-65535 or a host the HTTP client cannot use."""
    parts = urlsplit(url)
    parts.port  # noqa: B018 - raises for a bad port
    parse_url(url)  # urllib3's LocationParseError (a ValueError), e.g. for a host that is not valid IDNA
    return parts


def _url(value: Any) -> str:
    url = _text(value).rstrip("/")
    # The upstreams' own docs give base URLs with and without /v1; the gateway appends it itself.
    if url.endswith("/v1"):
        url = url[:-3]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    try:
        split_url(url)
    except ValueError:
        raise ValueError("must be an http:// or https:// URL with a valid host and port") from None
    if parts.username or parts.password:
        # The HTTP client would drop them without a word; a key belongs in the *_API_KEY setting.
        raise ValueError("must not contain user:password; put the key in the matching *_API_KEY setting")
    return url


def _optional_url(value: Any) -> str:
    return _url(value) if _text(value) else ""


def _number(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        raise ValueError("must be a number (seconds or a count)") from None
    if not number > 0 or number == float("inf"):
        raise ValueError("must be a positive number")
    return number


def _whole(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    """Return a parser of whole numbers in [minimum, maximum]."""
    span = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"

    def parse(value: Any) -> int:
        try:
            number = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            raise ValueError(f"must be a whole number {span}") from None
        if not number.is_integer() or number < minimum or (maximum is not None and number > maximum):
            raise ValueError(f"must be a whole number {span}")
        return int(number)

    return parse


_integer = _whole(1)
_count = _whole(0, 10)


# Names a route may use for each provider: its X-Provider value or its own name.
PROVIDER_NAMES = {"bridge_direct": "lmarena_bridge", "lmarena_bridge": "lmarena_bridge", "yupp2api": "yupp2api"}


def _routes(value: Any) -> dict[str, tuple[str, ...]]:
    """Parse {"model id": ["provider", ...]} (JSON: yupp2Api model ids hold newlines and emoji)."""
    if isinstance(value, str) and not value.strip():
        return {}
    try:
        routes = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError('must be JSON like {"gpt-5": ["bridge_direct", "yupp2api"]}') from None
    if not isinstance(routes, dict):
        raise ValueError('must be a JSON object like {"gpt-5": ["bridge_direct", "yupp2api"]}')
    parsed = {}
    for model, names in routes.items():
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or any(n not in PROVIDER_NAMES for n in names):
            raise ValueError(f"route for {model!r} must list providers from {', '.join(PROVIDER_NAMES)}")
        parsed[model] = tuple(PROVIDER_NAMES[n] for n in names)
    return parsed


MAX_ALIAS_NAME = 256


def _aliases(value: Any) -> dict[str, str]:
    """Parse `client=bridge,client2=bridge2`: the model a client names -> the name the gateway sends instead."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for item in _text(value).split(","):
            if not item.strip():
                continue
            client, equals, target = item.partition("=")
            if not equals:
                raise ValueError(f"must be pairs like gpt-4o=gpt-5,claude=claude-opus-4-1-20250805; got {item!r}")
            pairs.append((client, target))
    aliases: dict[str, str] = {}
    for client, target in pairs:
        client, target = _text(client), _text(target)
        for name in (client, target):
            if not name or len(name) > MAX_ALIAS_NAME or not name.isprintable():
                raise ValueError(f"has an empty, over-long or unprintable model name in {client}={target}")
        if client in aliases:
            raise ValueError(f"names {client!r} twice")
        aliases[client] = target
    return aliases


def _port(value: Any) -> int:
    port = _integer(value)
    if port > 65535:
        raise ValueError("must be a TCP port (1-65535)")
    return port


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = _text(value).lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("must be true or false")


def _csv(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else _text(value).split(",")
    return tuple(item.strip() for item in items if item and item.strip())


def _optional_file(value: Any) -> str:
    text = _text(value)
    if not text:
        return ""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = ROOT / path
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError(f"file {str(path)!r} does not exist or is not readable")
    return str(path)


def _path(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must be a file path")
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else ROOT / path)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        word = _text(value).lower()
        if word not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return word

    return parse


_INSTANCE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _instance(value: Any) -> str:
    name = _text(value)
    if name and not _INSTANCE.fullmatch(name):
        raise ValueError("must be 1-128 letters, digits and . _ : - (a name for logs and the /metrics label)")
    return name


def _redis_url(value: Any) -> str:
    url = _text(value)
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return url


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _domains(value: Any) -> tuple[str, ...]:
    domains = tuple(d.lower() for d in _csv(value))
    if not domains:
        raise ValueError("must list at least one domain")
    bad = [d for d in domains if not _DOMAIN.fullmatch(d)]
    if bad:
        raise ValueError(f"has invalid domain names: {', '.join(bad)}")
    return domains


_HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _host_ports(value: Any) -> frozenset[tuple[str, int | None]]:
    """Parse `host` or `host:port` items (IPv6 in brackets) into (host, port or None for any port) pairs."""
    pairs = set()
    for item in _csv(value):
        shape = f"must list host or host:port items like images.example.com,127.0.0.1:8080; got {item!r}"
        bare_ipv6 = item.count(":") > 1 and not item.startswith("[")
        try:
            parts = urlsplit("//" + (f"[{item}]" if bare_ipv6 else item))
            port = parts.port
        except ValueError:  # an unclosed bracket, a port that is not a number from 0 to 65535
            raise ValueError(shape) from None
        host = (parts.hostname or "").rstrip(".")
        if parts.path or parts.query or parts.fragment or "@" in parts.netloc or item.endswith(":") or port == 0:
            raise ValueError(shape)
        try:
            host = str(ipaddress.ip_address(host))  # one spelling per address: ::1, not 0:0::1
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(shape) from None
        pairs.add((host, port))
    return frozenset(pairs)


_POOL = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _pool_target(value: Any) -> tuple[str, str] | None:
    text = _text(value)
    if not text:
        return None
    domain, slash, pool = text.partition("/")
    if not slash or not _DOMAIN.fullmatch(domain.lower()) or not _POOL.fullmatch(pool) or not pool.strip("."):
        raise ValueError("must be domain/pool, like lmarena.ai/team (a pool name is 1-64 letters, digits, . _ -)")
    return domain.lower(), pool


def _key_routes(value: Any) -> dict[str, tuple[str, str]]:
    routes = {}
    for number, pair in enumerate(_csv(value), 1):
        # The key is what stands before the last '=': keys may hold '=' (base64 padding), pool targets never do.
        key, equals, target = pair.rpartition("=")
        if not equals or not key.strip():
            raise ValueError(f"pair {number} must be key=domain/pool")
        try:
            routes[key.strip()] = _pool_target(target)
        except ValueError as exc:
            raise ValueError(f"pair {number}: the target {exc}") from None
        if routes[key.strip()] is None:
            raise ValueError(f"pair {number} must be key=domain/pool")
    return routes


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("LMARENA_BRIDGE_ENABLED", True, _flag),
    Setting("LMARENA_BRIDGE_BASE_URL", "http://127.0.0.1:5102", _url),
    Setting("LMARENA_BRIDGE_API_KEY", "", _text, secret=True),
    Setting("LMARENA_BRIDGE_TIMEOUT", 180.0, _number),
    Setting("LMARENA_BRIDGE_IDLE_TIMEOUT", 120.0, _number),
    Setting("LMARENA_BRIDGE_CONNECT_TIMEOUT", 5.0, _number),
    Setting("LMARENA_BRIDGE_MAX_RETRIES", 1, _count),
    Setting("LMARENA_BRIDGE_MODELS_FILE", "", _optional_file),
    Setting("LMARENA_BRIDGE_CONFIG_FILE", "", _optional_file),
    Setting("YUPP2API_ENABLED", False, _flag),
    Setting("YUPP2API_BASE_URL", "http://127.0.0.1:8001", _url),
    Setting("YUPP2API_API_KEY", "", _text, secret=True),
    Setting("YUPP2API_TIMEOUT", 120.0, _number),
    Setting("YUPP2API_IDLE_TIMEOUT", 60.0, _number),
    Setting("YUPP2API_CONNECT_TIMEOUT", 5.0, _number),
    Setting("YUPP2API_MAX_RETRIES", 2, _count),
    Setting("GATEWAY_MODEL_ROUTES", {}, _routes),
    Setting("GATEWAY_MODEL_ALIASES", {}, _aliases),
    Setting("GATEWAY_TOOL_EMULATION", True, _flag),
    Setting("GATEWAY_REQUEST_BUDGET_SECONDS", 300.0, _number),
    Setting("GATEWAY_RETRY_BASE_DELAY", 0.5, _number),
    Setting("GATEWAY_RETRY_MAX_DELAY", 8.0, _number),
    Setting("GATEWAY_RETRY_AFTER_CAP", 10.0, _number),
    Setting("GATEWAY_BREAKER_FAILURES", 5, _integer),
    Setting("GATEWAY_BREAKER_COOLDOWN_SECONDS", 30.0, _number),
    Setting("GATEWAY_API_KEYS", (), _csv, secret=True),
    Setting("GATEWAY_ADMIN_KEY", "", _text, secret=True),
    Setting("GATEWAY_HOST", "127.0.0.1", _text),
    Setting("GATEWAY_PORT", 5104, _port),
    Setting("GATEWAY_THREADS", 512, _integer),
    Setting("GATEWAY_MAX_BODY_BYTES", 16 * 1024 * 1024, _integer),
    Setting("GATEWAY_MAX_UPSTREAM_BYTES", 32 * 1024 * 1024, _whole(64 * 1024)),
    Setting("GATEWAY_UPSTREAM_CA_FILE", "", _optional_file),
    Setting("GATEWAY_MAX_MESSAGES", 2000, _integer),
    Setting("GATEWAY_SSE_KEEPALIVE_SECONDS", 3.0, _number),
    Setting("GATEWAY_HEALTH_CACHE_SECONDS", 5.0, _number),
    Setting("GATEWAY_HEALTH_TIMEOUT", 2.0, _number),
    Setting("GATEWAY_MODELS_CACHE_SECONDS", 30.0, _number),
    Setting("GATEWAY_DEFAULT_IMAGE_MODEL", "", _text),
    Setting("GATEWAY_IMAGE_MAX_N", 4, _integer),
    Setting("GATEWAY_IMAGE_FETCH_TIMEOUT", 30.0, _number),
    Setting("GATEWAY_IMAGE_FETCH_ALLOW_HOSTS", frozenset(), _host_ports),
    Setting("STORAGE_PATH", str(ROOT / "storage" / "sessions.json"), _path),
    Setting("SESSION_STORE", "json", _choice("json", "redis")),
    Setting("REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url, secret=True),
    Setting("GATEWAY_STORE_LOCK_TIMEOUT", 10.0, _number),
    Setting(
        "GATEWAY_SESSION_DOMAINS", ("lmarena.ai", "canary.lmarena.ai", "alpha.lmarena.ai", "beta.lmarena.ai"), _domains
    ),
    Setting("GATEWAY_KEY_ROUTES", {}, _key_routes, secret=True),
    Setting("GATEWAY_DEFAULT_POOL", None, _pool_target),
    Setting("GATEWAY_POOL_COOLDOWN_SECONDS", 60.0, _number),
    Setting("GATEWAY_CONCURRENT_SESSIONS_LIMIT", 10, _integer),
    Setting("GATEWAY_SESSION_ACTIVE_SECONDS", 300.0, _number),
    Setting("GATEWAY_SESSION_CLEANUP_DAYS", 30.0, _number),
    Setting("GATEWAY_CRON_TOKEN", "", _text, secret=True),
    Setting("GATEWAY_ENABLE_SESSION_ANALYTICS", True, _flag),
    Setting("GATEWAY_ANALYTICS_PATH", str(ROOT / "storage" / "analytics.sqlite3"), _path),
    Setting("GATEWAY_ANALYTICS_RETENTION_DAYS", 30.0, _number),
    Setting("GATEWAY_METRICS_TOKEN", "", _text, secret=True),
    Setting("GATEWAY_USERSCRIPT_SECRET", "", _text, secret=True),
    Setting("GATEWAY_USERSCRIPT_TOKEN_DAYS", 180, _whole(1, 3650)),
    Setting("GATEWAY_DASHBOARD_SECRET", "", _text, secret=True),
    Setting("GATEWAY_PUBLIC_URL", "", _optional_url),
    Setting("CORS_ORIGINS", (), _csv),
    Setting("GATEWAY_ALLOWED_HOSTS", (), _csv),
    Setting("GATEWAY_RATE_LIMIT_PER_MINUTE", 0, _whole(0, 1_000_000)),
    Setting("GATEWAY_RATE_LIMIT_BURST", 0, _whole(0, 1_000_000)),
    Setting("GATEWAY_EVENT_RATE_PER_MINUTE", 60, _whole(0, 1_000_000)),
    Setting("GATEWAY_MAX_IN_FLIGHT_PER_KEY", 8, _whole(0, 100_000)),
    Setting("DEBUG_MODE", False, _flag),
    Setting("LOG_REQUESTS", False, _flag),
    Setting("GATEWAY_LOG_FORMAT", "text", _choice("text", "json")),
    Setting("GATEWAY_INSTANCE_ID", "", _instance),
)

SECRET_SETTINGS = frozenset(s.name for s in SETTINGS if s.secret)

# Settings earlier versions read, and why they are ignored now: a leftover gets one log line, not a start-up failure.
RETIRED_SETTINGS = {
    "LMARENA_BRIDGE_MODEL_MAP_FILE": (
        "LMArenaBridge applies its own model_endpoint_map.json and the gateway has no use for it"
    ),
}


def storage_file(config: Mapping[str, Any], name: str) -> str:
    """Return the path of file name in the storage folder, the folder STORAGE_PATH's session file lives in."""
    return os.path.join(os.path.dirname(config["STORAGE_PATH"]), name)


def _shown(setting: Setting, raw: Any) -> str:
    """Return a bad value as it may appear in an error: secrets hidden, URL passwords masked."""
    if setting.secret:
        return "<hidden>"
    return re.sub(r"(://[^/@\s]*:)[^/@\s]*@", r"\1***@", repr(raw))


def load_settings(
    test_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_path: Path | None = None,
) -> dict[str, Any]:
    """Return every setting, parsed; raise ConfigError naming the first bad one."""
    environ = os.environ if environ is None else environ
    if dotenv_path is None:
        # GATEWAY_ENV_FILE moves the .env file (or, set empty, turns it off); it cannot live in .env itself.
        chosen = (test_config or {}).get("GATEWAY_ENV_FILE", environ.get("GATEWAY_ENV_FILE"))
        dotenv_path = ROOT / ".env" if chosen is None else (ROOT / chosen if chosen else None)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if dotenv_path is not None and dotenv_path.is_file():
        layers.append((str(dotenv_path), {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}))
    layers.append(("the environment", environ))
    if test_config:
        layers.append(("the test config", test_config))
    _log_retired(layers)

    settings: dict[str, Any] = {}
    for setting in SETTINGS:
        raw: Any = setting.default
        for _, layer in layers:
            if setting.name in layer:
                raw = layer[setting.name]
        try:
            settings[setting.name] = setting.parse(raw) if raw is not setting.default else setting.default
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{setting.name}={_shown(setting, raw)} {exc}") from None
    _check_pool_targets(settings)
    # test_config may carry keys that are not settings (TESTING, service overrides): keep them.
    for key, value in (test_config or {}).items():
        settings.setdefault(key, value)
    return settings


def _check_pool_targets(settings: dict[str, Any]) -> None:
    """Refuse pool targets the other settings make meaningless: unknown client keys, domains not served."""
    routes, keys = settings["GATEWAY_KEY_ROUTES"], settings["GATEWAY_API_KEYS"]
    if routes and not keys:
        raise ConfigError("GATEWAY_KEY_ROUTES needs client keys: set GATEWAY_API_KEYS (without keys, no key is known)")
    unknown = sum(key not in keys for key in routes)
    if unknown:
        raise ConfigError(f"GATEWAY_KEY_ROUTES names {unknown} key(s) that are not in GATEWAY_API_KEYS")
    targets = [("GATEWAY_KEY_ROUTES", t) for t in routes.values()] + [
        ("GATEWAY_DEFAULT_POOL", settings["GATEWAY_DEFAULT_POOL"])
    ]
    for name, target in targets:
        if target is not None and target[0] not in settings["GATEWAY_SESSION_DOMAINS"]:
            raise ConfigError(f"{name} names the domain {target[0]!r}, which is not in GATEWAY_SESSION_DOMAINS")


def _log_retired(layers: list[tuple[str, Mapping[str, Any]]]) -> None:
    """Log one line for each retired setting still present, naming where it was found."""
    for name, why in RETIRED_SETTINGS.items():
        found = [where for where, layer in layers if name in layer]
        if found:
            log.warning("%s is set in %s but ignored: %s; remove it.", name, " and ".join(found), why)
