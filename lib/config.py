"""Settings: read once from the environment into one frozen object, from one table.

Every numeric and boolean setting (name, type, bounds, default, doc line) is written once, in
``SPECS``; the loader and the dataclass defaults read it. The others (URLs, lists, rates,
enumerations) have a parser of their own below.

``load_settings`` takes the environment as a mapping so that tests pass a dict. A value that
cannot be used raises ``SettingsError`` naming the variable and the value; a missing
``OPENAI_API_KEY`` is *not* an error here (the function must still import: every request then
gets a 500 that names the variable, see ``api/generate.py``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from lib.retry import RetryPolicy, Target

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FUNCTION_FILE = "api/generate.py"

PromptEndpoint = Literal["chat", "completions"]
OutputFormat = Literal["openai", "ui", "text"]
_FORMATS: dict[str, OutputFormat] = {"openai": "openai", "ui": "ui", "text": "text"}
UpstreamAPI = Literal["chat", "responses"]
MaxTokensField = Literal["max_completion_tokens", "max_tokens"]
# The optional request fields the function can forward (lib/request.py checks each);
# ALLOWED_PARAMS narrows them per deployment. docs/chat-completions.md has the rules.
OPTIONAL_PARAMS: frozenset[str] = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "stop",
        "seed",
        "n",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "verbosity",
        "user",
        "logprobs",
        "top_logprobs",
        "safety_identifier",
    }
)
IMAGE_SCHEMES = frozenset({"https", "http", "data"})


class SettingsError(ValueError):
    """Raised when an environment variable holds a value the function cannot use."""


@dataclass(frozen=True, slots=True)
class Spec:
    """One numeric or boolean setting: its variable, type, bounds, default and doc line."""

    name: str
    kind: type[int] | type[float] | type[bool]
    default: float
    low: float = 0
    high: float = 0
    doc: str = ""
    off_at_zero: bool = False  # 0 (the default) means the limit is off: read as None


_KB, _MB = 1024, 1024 * 1024
# Every numeric and boolean setting, written once: load_settings reads it, the dataclasses take
# their defaults from it, and tests/test_settings_table.py checks the docs' reference tables
# against it (name and default), so the three cannot drift.
SPECS: Final[tuple[Spec, ...]] = (
    # upstream
    Spec("UPSTREAM_CONNECT_TIMEOUT", float, 10.0, 0.01, 600.0, "seconds to open a connection"),
    Spec("UPSTREAM_FIRST_BYTE_TIMEOUT", float, 60.0, 0.01, 3600.0, "seconds to response headers"),
    Spec("UPSTREAM_IDLE_TIMEOUT", float, 120.0, 0.01, 3600.0, "seconds of upstream silence"),
    Spec("UPSTREAM_MAX_LINE_BYTES", int, _MB, _KB, 64 * _MB, "longest upstream SSE line"),
    Spec("UPSTREAM_MAX_CONNECTIONS", int, 1000, 1, 100_000, "shared connection pool size"),
    Spec("UPSTREAM_INCLUDE_USAGE", bool, True, doc="ask the upstream for the usage chunk"),
    Spec("UPSTREAM_MAX_RETRIES", int, 2, 0, 10, "extra attempts per upstream"),
    Spec("UPSTREAM_RETRY_BASE_DELAY", float, 0.5, 0.0, 60.0, "first backoff, seconds"),
    Spec("UPSTREAM_RETRY_MAX_DELAY", float, 8.0, 0.0, 600.0, "backoff cap, seconds"),
    # request limits
    Spec("MAX_TOKENS", int, 1024, 1, 1_000_000, "cap (and default) for max_tokens"),
    Spec("MAX_BODY_BYTES", int, 64 * _KB, 256, 16 * _MB, "request body cap"),
    Spec("MAX_IMAGE_BODY_BYTES", int, 4 * _MB, 256, 64 * _MB, "body cap with images"),
    Spec("BODY_READ_TIMEOUT", float, 15.0, 0.05, 600.0, "seconds for the whole body to arrive"),
    Spec("MAX_PROMPT_CHARS", int, 32_000, 1, 10_000_000, "cap on the prompt or all contents"),
    Spec("MAX_MESSAGES", int, 64, 1, 10_000, "cap on messages"),
    # stream limits
    Spec("MAX_DURATION", float, 0.0, 0.0, 86_400.0, "time limit if none is given", True),
    Spec("DEADLINE_MARGIN", float, 2.0, 0.0, 600.0, "seconds before the limit to end cleanly"),
    Spec("KEEPALIVE_INTERVAL", float, 15.0, 0.05, 600.0, "seconds of silence before a ping"),
    Spec("CLIENT_WRITE_TIMEOUT", float, 30.0, 0.05, 3600.0, "longest wait of one write"),
    Spec("MAX_STREAM_SECONDS", float, 300.0, 0.0, 86_400.0, "longest stream, 0: no limit", True),
    Spec("REPETITION_WINDOW", int, 2000, 0, 1_000_000, "characters that must repeat, 0: off"),
    # output
    Spec("LOG_PROMPTS", bool, False, doc="include the prompt in the log line"),
    # CORS
    Spec("CORS_MAX_AGE", int, 600, 0, 86_400, "seconds a browser may cache a preflight"),
    # protection
    Spec("MAX_CONCURRENT_STREAMS", int, 0, 0, 1_000_000, "open streams per client", True),
    Spec("GLOBAL_MAX_CONCURRENT_STREAMS", int, 0, 0, 1_000_000, "open streams in all", True),
    Spec("STORE_TIMEOUT", float, 0.5, 0.01, 10.0, "seconds for each store call"),
    Spec("STORE_MAX_CONNECTIONS", int, 20, 1, 10_000, "connections to the store"),
    Spec("STREAM_LEASE_SECONDS", float, 30.0, 3.0, 3600.0, "lifetime of a stream slot's lease"),
    Spec("AUTH_MAX_TOKEN_LIFETIME", int, 86_400, 60, 30 * 86_400, "longest token lifetime"),
    Spec("AUTH_JWKS_CACHE_SECONDS", float, 600.0, 60.0, 86_400.0, "how long keys are used"),
    Spec("AUTH_JWKS_TIMEOUT", float, 5.0, 0.05, 60.0, "seconds for one JWKS fetch"),
    Spec("IPV6_PREFIX", int, 56, 16, 128, "IPv6 callers count per block of this length"),
)
SPEC: Final[Mapping[str, Spec]] = {spec.name: spec for spec in SPECS}


def default(name: str) -> Any:
    """A setting's default as its field holds it (None for a limit that is off)."""
    spec = SPEC[name]
    if spec.off_at_zero and not spec.default:
        return None
    return spec.kind(spec.default)


def read(env: Mapping[str, str], name: str) -> Any:
    """A table setting from ``env``, checked against its type and bounds."""
    spec = SPEC[name]
    if spec.kind is bool:
        return _flag(env, name, bool(spec.default))
    if spec.kind is int:
        value: float = _number(env, name, int(spec.default), int, int(spec.low), int(spec.high))
    else:
        value = _number(env, name, float(spec.default), float, float(spec.low), float(spec.high))
    return None if spec.off_at_zero and not value else value


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the function reads from its environment. Names mirror the variables."""

    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    default_model: str = "gpt-4o-mini"
    allowed_models: frozenset[str] = frozenset({"gpt-4o-mini"})
    max_tokens: int = default("MAX_TOKENS")
    max_body_bytes: int = default("MAX_BODY_BYTES")
    body_read_timeout: float = default("BODY_READ_TIMEOUT")
    max_prompt_chars: int = default("MAX_PROMPT_CHARS")
    max_messages: int = default("MAX_MESSAGES")
    prompt_endpoint: PromptEndpoint = "chat"
    upstream_include_usage: bool = default("UPSTREAM_INCLUDE_USAGE")
    connect_timeout: float = default("UPSTREAM_CONNECT_TIMEOUT")
    first_byte_timeout: float = default("UPSTREAM_FIRST_BYTE_TIMEOUT")
    idle_timeout: float = default("UPSTREAM_IDLE_TIMEOUT")
    max_line_bytes: int = default("UPSTREAM_MAX_LINE_BYTES")
    upstream_max_connections: int = default("UPSTREAM_MAX_CONNECTIONS")
    max_duration: float | None = default("MAX_DURATION")
    deadline_margin: float = default("DEADLINE_MARGIN")
    keepalive_interval: float = default("KEEPALIVE_INTERVAL")
    write_timeout: float = default("CLIENT_WRITE_TIMEOUT")
    log_prompts: bool = default("LOG_PROMPTS")
    default_format: OutputFormat = "openai"
    allowed_origins: frozenset[str] = frozenset()
    cors_max_age: int = default("CORS_MAX_AGE")
    protection: Protection = field(default_factory=lambda: Protection())
    # Resilience (issue 5): retries before the first byte, fallbacks, per-stream limits.
    upstream_max_retries: int = default("UPSTREAM_MAX_RETRIES")
    upstream_retry_base_delay: float = default("UPSTREAM_RETRY_BASE_DELAY")
    upstream_retry_max_delay: float = default("UPSTREAM_RETRY_MAX_DELAY")
    fallbacks: tuple[Target, ...] = ()
    max_stream_seconds: float | None = default("MAX_STREAM_SECONDS")
    repetition_window: int = default("REPETITION_WINDOW")
    repetition_max_period: int = 200
    # The Chat Completions surface (issue 12, docs/chat-completions.md).
    max_tokens_field: MaxTokensField = "max_completion_tokens"
    allowed_params: frozenset[str] = OPTIONAL_PARAMS
    ignored_params: frozenset[str] = frozenset()
    image_url_schemes: frozenset[str] = frozenset({"https", "data"})
    max_image_body_bytes: int = default("MAX_IMAGE_BODY_BYTES")
    # OpenAI's Responses API upstream (issue 13, docs/responses.md): chat or responses.
    upstream_api: UpstreamAPI = "chat"

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            self.upstream_max_retries, self.upstream_retry_base_delay, self.upstream_retry_max_delay
        )

    @property
    def chat_url(self) -> str:
        return self.openai_base_url.rstrip("/") + "/chat/completions"

    @property
    def completions_url(self) -> str:
        return self.openai_base_url.rstrip("/") + "/completions"

    @property
    def responses_url(self) -> str:
        return self.openai_base_url.rstrip("/") + "/responses"


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def _number[T: (int, float)](
    env: Mapping[str, str], name: str, default: T, cast: Callable[[str], T], low: T, high: T
) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r} is not a finite number")
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw!r} is outside {low}..{high}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def _csv(env: Mapping[str, str], name: str) -> frozenset[str]:
    return frozenset(part.strip() for part in env.get(name, "").split(",") if part.strip())


_ORIGIN = re.compile(r"https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def _origins(env: Mapping[str, str]) -> frozenset[str]:
    """ALLOWED_ORIGINS: exact origins (scheme://host[:port]), compared byte for byte with the
    browser's Origin header, so anything else (a path, a wildcard) is refused here."""
    origins = frozenset(origin.lower() for origin in _csv(env, "ALLOWED_ORIGINS"))
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise SettingsError(
                f"ALLOWED_ORIGINS entry {origin!r} is not an origin like https://app.example.com "
                "(scheme, host and optional port; no path, no trailing slash, no wildcard)"
            )
    return origins


def _fallbacks(env: Mapping[str, str]) -> tuple[Target, ...]:
    """``UPSTREAM_FALLBACKS``: a JSON list of ``{"base_url", "api_key_env", "model"}``.

    Keys are never inline: ``api_key_env`` names the variable that holds the fallback's key
    (default ``OPENAI_API_KEY``), so keys stay in the platform's secret variables and this one
    can be shown and reviewed. ``model``, if given, replaces the caller's model for that upstream.
    """
    raw = env.get("UPSTREAM_FALLBACKS", "").strip()
    if not raw:
        return ()
    try:
        items: Any = json.loads(raw)
    except ValueError:
        raise SettingsError("UPSTREAM_FALLBACKS is not valid JSON") from None
    if not isinstance(items, list):
        raise SettingsError("UPSTREAM_FALLBACKS must be a JSON list of objects")
    targets = []
    for number, item in enumerate(items, 1):
        where = f"UPSTREAM_FALLBACKS[{number - 1}]"
        if not isinstance(item, dict):
            raise SettingsError(f"{where} must be an object")
        unknown = set(item) - {"base_url", "api_key_env", "model"}
        if "api_key" in unknown:
            raise SettingsError(
                f"{where} has an inline api_key: put the key in its own variable and name that "
                "variable in api_key_env"
            )
        if unknown:
            raise SettingsError(f"{where} has unknown fields {sorted(unknown)}")
        base_url, key_env, model = (
            item.get("base_url"),
            item.get("api_key_env", "OPENAI_API_KEY"),
            item.get("model"),
        )
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise SettingsError(f"{where}.base_url must start with http:// or https://")
        if not isinstance(key_env, str) or not env.get(key_env, "").strip():
            raise SettingsError(f"{where}.api_key_env={key_env!r} names no variable with a key")
        if model is not None and (not isinstance(model, str) or not model):
            raise SettingsError(f"{where}.model must be a non-empty string")
        targets.append(Target(f"fallback{number}", base_url, env[key_env].strip(), model))
    return tuple(targets)


def _params(env: Mapping[str, str]) -> tuple[frozenset[str], frozenset[str]]:
    """``ALLOWED_PARAMS`` (default: every optional field) and ``IGNORED_PARAMS`` (the app's own
    extra body fields, which the AI SDK transports send along; default: none)."""
    raw = env.get("ALLOWED_PARAMS", "").strip()
    allowed = OPTIONAL_PARAMS if raw.lower() in ("", "all") else _csv(env, "ALLOWED_PARAMS")
    if raw.lower() == "none":
        allowed = frozenset()
    unknown = allowed - OPTIONAL_PARAMS
    if unknown:
        raise SettingsError(
            f"ALLOWED_PARAMS names {sorted(unknown)}, which are not optional request fields "
            f"(they are: {', '.join(sorted(OPTIONAL_PARAMS))})"
        )
    ignored = _csv(env, "IGNORED_PARAMS")
    clash = ignored & (OPTIONAL_PARAMS | {"prompt", "messages", "model", "stream"})
    if clash:
        raise SettingsError(f"IGNORED_PARAMS may not name request fields: {sorted(clash)}")
    return allowed, ignored


def _image_schemes(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("IMAGE_URL_SCHEMES", "").strip().lower()
    if not raw:
        return frozenset({"https", "data"})
    if raw == "none":
        return frozenset()
    schemes = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if not schemes <= IMAGE_SCHEMES:
        raise SettingsError(
            f"IMAGE_URL_SCHEMES={raw!r} may list only https, http and data (or none)"
        )
    return schemes


def vercel_max_duration(root: Path = PROJECT_ROOT, function: str = FUNCTION_FILE) -> float | None:
    """The ``maxDuration`` that ``vercel.json`` gives this function, if the file is deployed."""
    try:
        config = json.loads((root / "vercel.json").read_text(encoding="utf-8"))
        value = config["functions"][function]["maxDuration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def load_settings(env: Mapping[str, str], *, root: Path = PROJECT_ROOT) -> Settings:
    """Build the settings once per process; raises SettingsError on an unusable value."""
    base_url = _text(env, "OPENAI_BASE_URL", "https://api.openai.com/v1")
    if not base_url.startswith(("http://", "https://")):
        raise SettingsError(f"OPENAI_BASE_URL={base_url!r} must start with http:// or https://")
    default_model = _text(env, "DEFAULT_MODEL", "gpt-4o-mini")
    allowed = _csv(env, "ALLOWED_MODELS") or frozenset({default_model})
    if default_model not in allowed:
        raise SettingsError(f"DEFAULT_MODEL={default_model!r} is not in ALLOWED_MODELS")
    endpoint = _text(env, "PROMPT_ENDPOINT", "chat")
    if endpoint not in ("chat", "completions"):
        raise SettingsError(f"PROMPT_ENDPOINT={endpoint!r} must be chat or completions")
    env_duration = read(env, "MAX_DURATION")
    raw_format = _text(env, "DEFAULT_FORMAT", "openai")
    default_format = _FORMATS.get(raw_format)
    if default_format is None:
        raise SettingsError(f"DEFAULT_FORMAT={raw_format!r} must be openai, ui or text")
    window = read(env, "REPETITION_WINDOW")  # 0: no detector
    max_field = _text(env, "MAX_TOKENS_FIELD", "max_completion_tokens")
    if max_field not in ("max_completion_tokens", "max_tokens"):
        raise SettingsError(
            f"MAX_TOKENS_FIELD={max_field!r} must be max_completion_tokens or max_tokens"
        )
    allowed_params, ignored_params = _params(env)
    upstream_api = _text(env, "UPSTREAM_API", "chat")
    if upstream_api not in ("chat", "responses"):
        raise SettingsError(f"UPSTREAM_API={upstream_api!r} must be chat or responses")
    return Settings(
        openai_api_key=env.get("OPENAI_API_KEY", "").strip() or None,
        openai_base_url=base_url,
        default_model=default_model,
        allowed_models=allowed,
        max_tokens=read(env, "MAX_TOKENS"),
        max_body_bytes=read(env, "MAX_BODY_BYTES"),
        body_read_timeout=read(env, "BODY_READ_TIMEOUT"),
        max_prompt_chars=read(env, "MAX_PROMPT_CHARS"),
        max_messages=read(env, "MAX_MESSAGES"),
        prompt_endpoint="completions" if endpoint == "completions" else "chat",
        upstream_include_usage=read(env, "UPSTREAM_INCLUDE_USAGE"),
        connect_timeout=read(env, "UPSTREAM_CONNECT_TIMEOUT"),
        first_byte_timeout=read(env, "UPSTREAM_FIRST_BYTE_TIMEOUT"),
        idle_timeout=read(env, "UPSTREAM_IDLE_TIMEOUT"),
        max_line_bytes=read(env, "UPSTREAM_MAX_LINE_BYTES"),
        upstream_max_connections=read(env, "UPSTREAM_MAX_CONNECTIONS"),
        max_duration=vercel_max_duration(root) or (env_duration or None),
        deadline_margin=read(env, "DEADLINE_MARGIN"),
        keepalive_interval=read(env, "KEEPALIVE_INTERVAL"),
        write_timeout=read(env, "CLIENT_WRITE_TIMEOUT"),
        log_prompts=read(env, "LOG_PROMPTS"),
        default_format=default_format,
        allowed_origins=_origins(env),
        cors_max_age=read(env, "CORS_MAX_AGE"),
        protection=load_protection(env),
        upstream_max_retries=read(env, "UPSTREAM_MAX_RETRIES"),
        upstream_retry_base_delay=read(env, "UPSTREAM_RETRY_BASE_DELAY"),
        upstream_retry_max_delay=read(env, "UPSTREAM_RETRY_MAX_DELAY"),
        fallbacks=_fallbacks(env),
        max_stream_seconds=read(env, "MAX_STREAM_SECONDS") or None,
        repetition_window=window,
        repetition_max_period=_number(
            env, "REPETITION_MAX_PERIOD", min(200, max(1, window // 2)), int, 1, max(1, window // 2)
        ),
        max_tokens_field="max_tokens" if max_field == "max_tokens" else "max_completion_tokens",
        allowed_params=allowed_params,
        ignored_params=ignored_params,
        image_url_schemes=_image_schemes(env),
        max_image_body_bytes=read(env, "MAX_IMAGE_BODY_BYTES"),
        upstream_api="responses" if upstream_api == "responses" else "chat",
    )


# --- protection (issue 6): auth, rate limits, budgets; see docs/protection.md ------------------

MIN_SECRET_CHARS = 32
DEFAULT_MAX_TOKEN_LIFETIME: int = default(
    "AUTH_MAX_TOKEN_LIFETIME"
)  # Auth0's default access-token lifetime, the longest common
MIN_TOKEN_CHARS = 16
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_RATE = re.compile(r"([0-9]{1,12})\s*/\s*([0-9]{0,9})\s*(s|sec|second|m|min|minute|h|hour|d|day)s?")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` per ``period`` seconds, as written in ``RATE_LIMIT=20/minute``."""

    count: int
    period: int


@dataclass(frozen=True, slots=True)
class Protection:
    """Who may call, and how much: all off by default (then a loud warning at start)."""

    auth_tokens: frozenset[str] = frozenset()
    auth_signing_secret: str | None = None
    rate_limit: Rate | None = None
    max_concurrent_streams: int | None = default("MAX_CONCURRENT_STREAMS")
    global_max_concurrent_streams: int | None = default("GLOBAL_MAX_CONCURRENT_STREAMS")
    token_budget: Rate | None = None
    redis_url: str | None = None
    store_timeout: float = default("STORE_TIMEOUT")
    store_max_connections: int = default("STORE_MAX_CONNECTIONS")
    stream_lease_seconds: float = default("STREAM_LEASE_SECONDS")
    trust_proxy_header: str | None = None
    auth_max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    jwt: JWTSettings | None = None
    ipv6_prefix: int = default("IPV6_PREFIX")


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """Standard JWTs (docs/protection.md): HS256 with a shared secret, provider keys from a
    JWKS, or both. ``None`` in ``Protection.jwt`` when neither is set, and then PyJWT is never
    imported."""

    secret: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: tuple[str, ...] = ()
    client_claim: str = "sub"
    origin_claim: str = "origin"
    max_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    jwks_cache_seconds: float = default("AUTH_JWKS_CACHE_SECONDS")
    jwks_timeout: float = default("AUTH_JWKS_TIMEOUT")


def parse_rate(name: str, raw: str) -> Rate | None:
    """``20/minute``, ``100000/day``, ``5/10s``; empty or ``off`` means no limit."""
    text = raw.strip().lower()
    if text in ("", "off", "none"):
        return None
    match = _RATE.fullmatch(text)
    if match is None or int(match[1]) < 1 or match[2] == "0":
        raise SettingsError(
            f"{name}={raw!r} is not a rate; write it like 20/minute, 100000/day or 5/10s"
        )
    period = int(match[2] or 1) * _UNITS[match[3][0]]
    if period > 366 * 86_400:
        raise SettingsError(f"{name}={raw!r}: the period may be at most 366 days")
    return Rate(int(match[1]), period)


def _secret(env: Mapping[str, str], name: str) -> str | None:
    secret = env.get(name, "").strip() or None
    if secret is not None and len(secret) < MIN_SECRET_CHARS:
        # The value is a secret: name its length, never the value.
        raise SettingsError(
            f"{name} has {len(secret)} characters; use at least {MIN_SECRET_CHARS} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_CLAIM = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def _jwks_url(env: Mapping[str, str]) -> str | None:
    """AUTH_JWKS_URL: https, or plain http to a loopback address (local development, tests)."""
    url = env.get("AUTH_JWKS_URL", "").strip() or None
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"AUTH_JWKS_URL={url!r} is not a URL") from None
    loopback = host in _LOOPBACK_NAMES or host.startswith("127.")
    allowed = parts.scheme == "https" or (parts.scheme == "http" and loopback)
    if not host or not allowed:
        raise SettingsError(
            f"AUTH_JWKS_URL={url!r} must be an https:// URL (plain http only to 127.0.0.1, ::1 "
            "or localhost)"
        )
    return url


def _claim_name(env: Mapping[str, str], name: str, default: str) -> str:
    claim = _text(env, name, default)
    if not _CLAIM.fullmatch(claim):
        raise SettingsError(f"{name}={claim!r} is not a claim name")
    return claim


def _load_jwt(env: Mapping[str, str], max_lifetime: int) -> JWTSettings | None:
    secret = _secret(env, "AUTH_JWT_SECRET")
    jwks_url = _jwks_url(env)
    issuer = env.get("AUTH_JWT_ISSUER", "").strip() or None
    audience = tuple(sorted(_csv(env, "AUTH_JWT_AUDIENCE")))
    if secret is None and jwks_url is None:
        for name in ("AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"):
            if env.get(name, "").strip():
                raise SettingsError(
                    f"{name} is set but neither AUTH_JWT_SECRET nor AUTH_JWKS_URL is"
                )
        return None
    if jwks_url is not None and issuer is None:
        # Some key sets sign for many tenants (Firebase's is shared by every project): without
        # an issuer, any of them could call. docs/protection.md has each provider's issuer.
        raise SettingsError("AUTH_JWKS_URL needs AUTH_JWT_ISSUER (the provider's issuer URL)")
    return JWTSettings(
        secret=secret,
        jwks_url=jwks_url,
        issuer=issuer,
        audience=audience,
        client_claim=_claim_name(env, "AUTH_JWT_CLIENT_CLAIM", "sub"),
        origin_claim=_claim_name(env, "AUTH_JWT_ORIGIN_CLAIM", "origin"),
        max_lifetime=max_lifetime,
        jwks_cache_seconds=read(env, "AUTH_JWKS_CACHE_SECONDS"),
        jwks_timeout=read(env, "AUTH_JWKS_TIMEOUT"),
    )


def load_protection(env: Mapping[str, str]) -> Protection:
    tokens = _csv(env, "AUTH_TOKENS")
    for token in tokens:
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise SettingsError(
                f"AUTH_TOKENS holds a token of {len(token)} characters; each must be at least "
                f"{MIN_TOKEN_CHARS} printable characters without spaces"
            )
    secret = _secret(env, "AUTH_SIGNING_SECRET")
    max_lifetime = read(env, "AUTH_MAX_TOKEN_LIFETIME")
    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
    proxy = env.get("TRUST_PROXY_HEADER", "").strip().lower()
    if not proxy:
        # On Vercel the edge overwrites this header with the caller's address (docs/protection.md).
        proxy = "x-vercel-forwarded-for" if env.get("VERCEL", "").strip() == "1" else "none"
    if proxy != "none" and not re.fullmatch(r"[a-z0-9-]{1,64}", proxy):
        raise SettingsError(f"TRUST_PROXY_HEADER={proxy!r} is not a header name (or none)")
    return Protection(
        auth_tokens=tokens,
        auth_signing_secret=secret,
        rate_limit=parse_rate("RATE_LIMIT", env.get("RATE_LIMIT", "")),
        max_concurrent_streams=read(env, "MAX_CONCURRENT_STREAMS"),
        global_max_concurrent_streams=read(env, "GLOBAL_MAX_CONCURRENT_STREAMS"),
        token_budget=parse_rate("TOKEN_BUDGET", env.get("TOKEN_BUDGET", "")),
        redis_url=redis_url,
        store_timeout=read(env, "STORE_TIMEOUT"),
        store_max_connections=read(env, "STORE_MAX_CONNECTIONS"),
        stream_lease_seconds=read(env, "STREAM_LEASE_SECONDS"),
        trust_proxy_header=None if proxy == "none" else proxy,
        auth_max_token_lifetime=max_lifetime,
        jwt=_load_jwt(env, max_lifetime),
        ipv6_prefix=read(env, "IPV6_PREFIX"),
    )
