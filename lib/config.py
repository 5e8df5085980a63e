"""Settings: read once from the environment, from one table, into frozen groups.

Every setting (variable, group, field, default, parser, doc line; bounds for numbers) is written
once, in ``SPECS``; the loader reads it, the groups (named tuples) take their defaults from it, and
``tests/test_settings_table.py`` checks the docs' reference tables and the groups against it.
Each module is given only the group it needs: the upstream client ``UpstreamSettings``, request
parsing ``RequestLimits``, the relay's clock ``StreamLimits``, the limiter ``Protection``, the
CORS policy ``CORSSettings``; the handler composes them.

``load_settings`` takes the environment as a mapping so that tests pass a dict. A value that
cannot be used raises ``SettingsError`` naming the variable (and the value, unless it is a
secret); a missing ``OPENAI_API_KEY`` is *not* an error here (the function must still import:
every request then gets a 500 that names the variable, see ``api/generate.py``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, get_args
from urllib.parse import urlsplit

from lib.errors import redacted_repr
from lib.retry import RetryPolicy, Target

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FUNCTION_FILE = "api/generate.py"

PromptEndpoint = Literal["chat", "completions"]
OutputFormat = Literal["openai", "ui", "text"]
UpstreamAPI = Literal["chat", "responses"]
MaxTokensField = Literal["max_completion_tokens", "max_tokens"]
OUTPUT_FORMATS: Final[tuple[str, ...]] = get_args(OutputFormat)  # the format query parameter too
Group = Literal["upstream", "request", "stream", "protection", "jwt", "cors", "output"]
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
MIN_SECRET_CHARS = 32
MIN_TOKEN_CHARS = 16


class SettingsError(ValueError):
    """Raised when an environment variable holds a value the function cannot use."""


# A parser gets the variable's name, its value (stripped, never empty: an unset or blank
# variable takes the default without a parse) and the whole environment (for the one setting
# that names other variables, UPSTREAM_FALLBACKS).
Parser = Callable[[str, str, Mapping[str, str]], Any]


class Spec(NamedTuple):
    """One setting: its variable, where it lands, its default, how it is read, its doc line."""

    name: str
    group: Group
    field: str
    default: Any
    parse: Parser
    doc: str
    kind: type[int] | type[float] | type[bool] | None = None  # numbers and flags only
    low: float = 0
    high: float = 0
    shown: str = ""  # how the docs write a default that is not a plain number or none


# --- parsers -----------------------------------------------------------------------------------


def _number(kind: type[int] | type[float], low: float, high: float, off_at_zero: bool) -> Parser:
    def parse(name: str, raw: str, env: Mapping[str, str]) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{name}={raw!r} is not a finite number")
        if not low <= value <= high:
            shown = f"{int(low)}..{int(high)}" if kind is int else f"{low}..{high}"
            raise SettingsError(f"{name}={raw!r} is outside {shown}")
        return None if off_at_zero and not value else value

    return parse


def _flag(name: str, raw: str, env: Mapping[str, str]) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={value!r} is not a boolean (use true or false)")


def _text(name: str, raw: str, env: Mapping[str, str]) -> str:
    return raw


def _optional_text(name: str, raw: str, env: Mapping[str, str]) -> str | None:
    return raw


def _http_url(name: str, raw: str, env: Mapping[str, str]) -> str:
    if not raw.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={raw!r} must start with http:// or https://")
    return raw


def _choice(*choices: str) -> Parser:
    def parse(name: str, raw: str, env: Mapping[str, str]) -> str:
        if raw not in choices:
            raise SettingsError(f"{name}={raw!r} must be {' or '.join(choices)}")
        return raw

    return parse


def _csv(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _names(name: str, raw: str, env: Mapping[str, str]) -> frozenset[str]:
    return _csv(raw)


_ORIGIN = re.compile(r"https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def _origins(name: str, raw: str, env: Mapping[str, str]) -> frozenset[str]:
    """Exact origins (scheme://host[:port]), compared byte for byte with the browser's Origin
    header, so anything else (a path, a wildcard) is refused here."""
    origins = frozenset(origin.lower() for origin in _csv(raw))
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise SettingsError(
                f"{name} entry {origin!r} is not an origin like https://app.example.com "
                "(scheme, host and optional port; no path, no trailing slash, no wildcard)"
            )
    return origins


def _fallbacks(name: str, raw: str, env: Mapping[str, str]) -> tuple[Target, ...]:
    """A JSON list of ``{"base_url", "api_key_env", "model"}``.

    Keys are never inline: ``api_key_env`` names the variable that holds the fallback's key
    (default ``OPENAI_API_KEY``), so keys stay in the platform's secret variables and this one
    can be shown and reviewed. ``model``, if given, replaces the caller's model for that upstream.
    """
    try:
        items: Any = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{name} is not valid JSON") from None
    if not isinstance(items, list):
        raise SettingsError(f"{name} must be a JSON list of objects")
    targets = []
    for number, item in enumerate(items, 1):
        where = f"{name}[{number - 1}]"
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


def _allowed_params(name: str, raw: str, env: Mapping[str, str]) -> frozenset[str]:
    """Default (and ``all``): every optional field; ``none``: no optional field."""
    if raw.lower() == "all":
        return OPTIONAL_PARAMS
    if raw.lower() == "none":
        return frozenset()
    allowed = _csv(raw)
    unknown = allowed - OPTIONAL_PARAMS
    if unknown:
        raise SettingsError(
            f"{name} names {sorted(unknown)}, which are not optional request fields "
            f"(they are: {', '.join(sorted(OPTIONAL_PARAMS))})"
        )
    return allowed


def _ignored_params(name: str, raw: str, env: Mapping[str, str]) -> frozenset[str]:
    """The app's own extra body fields, which the AI SDK transports send along."""
    ignored = _csv(raw)
    clash = ignored & (OPTIONAL_PARAMS | {"prompt", "messages", "model", "stream"})
    if clash:
        raise SettingsError(f"{name} may not name request fields: {sorted(clash)}")
    return ignored


def _image_schemes(name: str, raw: str, env: Mapping[str, str]) -> frozenset[str]:
    value = raw.lower()
    if value == "none":
        return frozenset()
    schemes = _csv(value)
    if not schemes <= IMAGE_SCHEMES:
        raise SettingsError(f"{name}={value!r} may list only https, http and data (or none)")
    return schemes


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_RATE = re.compile(r"([0-9]{1,12})\s*/\s*([0-9]{0,9})\s*(s|sec|second|m|min|minute|h|hour|d|day)s?")


class Rate(NamedTuple):
    """``amount`` per ``period`` seconds, as written in ``RATE_LIMIT=20/minute``."""

    amount: int
    period: int


def parse_rate(name: str, raw: str, env: Mapping[str, str] | None = None) -> Rate | None:
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


def _secret(name: str, raw: str, env: Mapping[str, str]) -> str:
    if len(raw) < MIN_SECRET_CHARS:
        # The value is a secret: name its length, never the value.
        raise SettingsError(
            f"{name} has {len(raw)} characters; use at least {MIN_SECRET_CHARS} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


def _tokens(name: str, raw: str, env: Mapping[str, str]) -> frozenset[str]:
    tokens = _csv(raw)
    for token in tokens:
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
            raise SettingsError(
                f"{name} holds a token of {len(token)} characters; each must be at least "
                f"{MIN_TOKEN_CHARS} printable characters without spaces"
            )
    return tokens


def _redis_url(name: str, raw: str, env: Mapping[str, str]) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"{name} must start with redis://, rediss:// or unix://")
    return raw


def _header_name(name: str, raw: str, env: Mapping[str, str]) -> str | None:
    value = raw.lower()
    if value == "none":
        return None
    if not re.fullmatch(r"[a-z0-9-]{1,64}", value):
        raise SettingsError(f"{name}={value!r} is not a header name (or none)")
    return value


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _jwks_url(name: str, raw: str, env: Mapping[str, str]) -> str:
    """https, or plain http to a loopback address (local development, tests)."""
    try:
        parts = urlsplit(raw)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a URL") from None
    loopback = host in _LOOPBACK_NAMES or host.startswith("127.")
    allowed = parts.scheme == "https" or (parts.scheme == "http" and loopback)
    if not host or not allowed:
        raise SettingsError(
            f"{name}={raw!r} must be an https:// URL (plain http only to 127.0.0.1, ::1 "
            "or localhost)"
        )
    return raw


def _audience(name: str, raw: str, env: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(_csv(raw)))


_CLAIM = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


def _claim_name(name: str, raw: str, env: Mapping[str, str]) -> str:
    if not _CLAIM.fullmatch(raw):
        raise SettingsError(f"{name}={raw!r} is not a claim name")
    return raw


# --- the table ---------------------------------------------------------------------------------


def _num(
    name: str,
    group: Group,
    field_name: str,
    kind: type[int] | type[float],
    default: float,
    low: float,
    high: float,
    doc: str,
    *,
    off_at_zero: bool = False,
) -> Spec:
    """A numeric setting; with ``off_at_zero``, 0 (its default) means the limit is off: None."""
    value = None if off_at_zero and not default else kind(default)
    parse = _number(kind, low, high, off_at_zero)
    return Spec(name, group, field_name, value, parse, doc, kind, low, high)


def _bool(name: str, group: Group, field_name: str, default: bool, doc: str) -> Spec:
    return Spec(name, group, field_name, default, _flag, doc, bool)


_KB, _MB = 1024, 1024 * 1024
_OPENAI = "https://api.openai.com/v1"
_PROXY_DEFAULT = "x-vercel-forwarded-for` on Vercel, else `none"  # the docs' cell, unquoted
# fmt: off
SPECS: Final[tuple[Spec, ...]] = (
    # upstream: where requests go, with which key, how they are sent and read
    Spec("OPENAI_API_KEY", "upstream", "api_key", None, _optional_text, "the provider key"),
    Spec("OPENAI_BASE_URL", "upstream", "base_url", _OPENAI, _http_url, "the upstream API"),
    Spec("UPSTREAM_API", "upstream", "api", "chat", _choice(*get_args(UpstreamAPI)),
         "which upstream API"),
    Spec("PROMPT_ENDPOINT", "upstream", "prompt_endpoint", "chat",
         _choice(*get_args(PromptEndpoint)), "where a prompt goes"),
    Spec("MAX_TOKENS_FIELD", "upstream", "max_tokens_field", "max_completion_tokens",
         _choice(*get_args(MaxTokensField)), "the cap's name upstream"),
    _bool("UPSTREAM_INCLUDE_USAGE", "upstream", "include_usage", True, "ask for the usage chunk"),
    _num("UPSTREAM_CONNECT_TIMEOUT", "upstream", "connect_timeout", float, 10.0, 0.01, 600.0,
         "seconds to open a connection"),
    _num("UPSTREAM_FIRST_BYTE_TIMEOUT", "upstream", "first_byte_timeout", float, 60.0, 0.01,
         3600.0, "seconds to response headers"),
    _num("UPSTREAM_IDLE_TIMEOUT", "upstream", "idle_timeout", float, 120.0, 0.01, 3600.0,
         "seconds of upstream silence"),
    _num("UPSTREAM_MAX_LINE_BYTES", "upstream", "max_line_bytes", int, _MB, _KB, 64 * _MB,
         "longest upstream SSE line"),
    _num("UPSTREAM_MAX_CONNECTIONS", "upstream", "max_connections", int, 1000, 1, 100_000,
         "shared connection pool size"),
    _num("UPSTREAM_MAX_RETRIES", "upstream", "max_retries", int, 2, 0, 10,
         "extra attempts per upstream"),
    _num("UPSTREAM_RETRY_BASE_DELAY", "upstream", "retry_base_delay", float, 0.5, 0.0, 60.0,
         "first backoff, seconds"),
    _num("UPSTREAM_RETRY_MAX_DELAY", "upstream", "retry_max_delay", float, 8.0, 0.0, 600.0,
         "backoff cap, seconds"),
    Spec("UPSTREAM_FALLBACKS", "upstream", "fallbacks", (), _fallbacks, "fallback upstreams"),
    # request limits: what a caller may ask for
    Spec("DEFAULT_MODEL", "request", "default_model", "gpt-4o-mini", _text, "model if none"),
    Spec("ALLOWED_MODELS", "request", "allowed_models", frozenset(), _names,
         "models a caller may name", shown="DEFAULT_MODEL"),
    _num("MAX_TOKENS", "request", "max_tokens", int, 1024, 1, 1_000_000,
         "cap (and default) for max_tokens"),
    _num("MAX_BODY_BYTES", "request", "max_body_bytes", int, 64 * _KB, 256, 16 * _MB,
         "request body cap"),
    _num("MAX_IMAGE_BODY_BYTES", "request", "max_image_body_bytes", int, 4 * _MB, 256, 64 * _MB,
         "body cap with images"),
    _num("BODY_READ_TIMEOUT", "request", "body_read_timeout", float, 15.0, 0.05, 600.0,
         "seconds for the whole body to arrive"),
    _num("MAX_PROMPT_CHARS", "request", "max_prompt_chars", int, 32_000, 1, 10_000_000,
         "cap on the prompt or all contents"),
    _num("MAX_MESSAGES", "request", "max_messages", int, 64, 1, 10_000, "cap on messages"),
    Spec("ALLOWED_PARAMS", "request", "allowed_params", OPTIONAL_PARAMS, _allowed_params,
         "optional fields a caller may send", shown="all"),
    Spec("IGNORED_PARAMS", "request", "ignored_params", frozenset(), _ignored_params,
         "the app's own body fields, dropped"),
    Spec("IMAGE_URL_SCHEMES", "request", "image_url_schemes", frozenset({"https", "data"}),
         _image_schemes, "image URL schemes", shown="https,data"),
    # stream limits: the relay's clock and loop detector
    _num("MAX_DURATION", "stream", "max_duration", float, 0.0, 0.0, 86_400.0,
         "time limit if none is given", off_at_zero=True),
    _num("DEADLINE_MARGIN", "stream", "deadline_margin", float, 2.0, 0.0, 600.0,
         "seconds before the limit to end cleanly"),
    _num("KEEPALIVE_INTERVAL", "stream", "keepalive_interval", float, 15.0, 0.05, 600.0,
         "seconds of silence before a ping"),
    _num("CLIENT_WRITE_TIMEOUT", "stream", "write_timeout", float, 30.0, 0.05, 3600.0,
         "longest wait of one write"),
    _num("MAX_STREAM_SECONDS", "stream", "max_stream_seconds", float, 300.0, 0.0, 86_400.0,
         "longest stream, 0: no limit", off_at_zero=True),
    _num("REPETITION_WINDOW", "stream", "repetition_window", int, 2000, 0, 1_000_000,
         "characters that must repeat, 0: off"),
    _num("REPETITION_MAX_PERIOD", "stream", "repetition_max_period", int, 200, 1, 500_000,
         "longest repeating unit (at most half the window)"),
    # output
    Spec("DEFAULT_FORMAT", "output", "default_format", "openai", _choice(*OUTPUT_FORMATS),
         "format when the caller names none"),
    _bool("LOG_PROMPTS", "output", "log_prompts", False, "include the prompt in the log line"),
    # CORS
    Spec("ALLOWED_ORIGINS", "cors", "allowed_origins", frozenset(), _origins,
         "origins that may call from a browser"),
    _num("CORS_MAX_AGE", "cors", "max_age", int, 600, 0, 86_400,
         "seconds a browser may cache a preflight"),
    # protection
    Spec("AUTH_TOKENS", "protection", "auth_tokens", frozenset(), _tokens, "static bearer tokens"),
    Spec("AUTH_SIGNING_SECRET", "protection", "auth_signing_secret", None, _secret,
         "v1 signed tokens (deprecated)"),
    Spec("RATE_LIMIT", "protection", "rate_limit", None, parse_rate, "requests per client"),
    _num("MAX_CONCURRENT_STREAMS", "protection", "max_concurrent_streams", int, 0, 0, 1_000_000,
         "open streams per client", off_at_zero=True),
    _num("GLOBAL_MAX_CONCURRENT_STREAMS", "protection", "global_max_concurrent_streams", int, 0,
         0, 1_000_000, "open streams in all", off_at_zero=True),
    Spec("TOKEN_BUDGET", "protection", "token_budget", None, parse_rate, "tokens per client"),
    Spec("REDIS_URL", "protection", "redis_url", None, _redis_url,
         "the shared store for limits", shown="in-process memory"),
    _num("STORE_TIMEOUT", "protection", "store_timeout", float, 0.5, 0.01, 10.0,
         "seconds for each store call"),
    _num("STORE_MAX_CONNECTIONS", "protection", "store_max_connections", int, 20, 1, 10_000,
         "connections to the store"),
    _num("STREAM_LEASE_SECONDS", "protection", "stream_lease_seconds", float, 30.0, 3.0, 3600.0,
         "lifetime of a stream slot's lease"),
    Spec("TRUST_PROXY_HEADER", "protection", "trust_proxy_header", None, _header_name,
         "the header that holds the caller's address", shown=_PROXY_DEFAULT),
    _num("AUTH_MAX_TOKEN_LIFETIME", "protection", "auth_max_token_lifetime", int, 86_400, 60,
         30 * 86_400, "longest token lifetime"),
    _num("IPV6_PREFIX", "protection", "ipv6_prefix", int, 56, 16, 128,
         "IPv6 callers count per block of this length"),
    # JWTs (inside protection; on when a secret or a key set is given)
    Spec("AUTH_JWT_SECRET", "jwt", "secret", None, _secret, "HS256 shared secret"),
    Spec("AUTH_JWKS_URL", "jwt", "jwks_url", None, _jwks_url, "the provider's key set"),
    Spec("AUTH_JWT_ISSUER", "jwt", "issuer", None, _optional_text, "required iss"),
    Spec("AUTH_JWT_AUDIENCE", "jwt", "audience", (), _audience, "accepted aud values"),
    Spec("AUTH_JWT_CLIENT_CLAIM", "jwt", "client_claim", "sub", _claim_name, "who the caller is"),
    Spec("AUTH_JWT_ORIGIN_CLAIM", "jwt", "origin_claim", "origin", _claim_name, "bound origin"),
    _num("AUTH_JWKS_CACHE_SECONDS", "jwt", "jwks_cache_seconds", float, 600.0, 60.0, 86_400.0,
         "how long keys are used"),
    _num("AUTH_JWKS_TIMEOUT", "jwt", "jwks_timeout", float, 5.0, 0.05, 60.0,
         "seconds for one JWKS fetch"),
)
# fmt: on
SPEC: Final[Mapping[str, Spec]] = {spec.name: spec for spec in SPECS}


def default(name: str) -> Any:
    """A setting's default as its field holds it (None for a limit that is off)."""
    return SPEC[name].default


# --- the groups --------------------------------------------------------------------------------


class UpstreamSettings(NamedTuple):
    """Where requests go and how they are sent and read (``lib/upstream.py``, retries)."""

    api_key: str | None = default("OPENAI_API_KEY")
    base_url: str = default("OPENAI_BASE_URL")
    api: UpstreamAPI = default("UPSTREAM_API")
    prompt_endpoint: PromptEndpoint = default("PROMPT_ENDPOINT")
    max_tokens_field: MaxTokensField = default("MAX_TOKENS_FIELD")
    include_usage: bool = default("UPSTREAM_INCLUDE_USAGE")
    connect_timeout: float = default("UPSTREAM_CONNECT_TIMEOUT")
    first_byte_timeout: float = default("UPSTREAM_FIRST_BYTE_TIMEOUT")
    idle_timeout: float = default("UPSTREAM_IDLE_TIMEOUT")
    max_line_bytes: int = default("UPSTREAM_MAX_LINE_BYTES")
    max_connections: int = default("UPSTREAM_MAX_CONNECTIONS")
    max_retries: int = default("UPSTREAM_MAX_RETRIES")
    retry_base_delay: float = default("UPSTREAM_RETRY_BASE_DELAY")
    retry_max_delay: float = default("UPSTREAM_RETRY_MAX_DELAY")
    fallbacks: tuple[Target, ...] = default("UPSTREAM_FALLBACKS")

    def __repr__(self) -> str:
        return redacted_repr(self)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.retry_base_delay, self.retry_max_delay)

    @property
    def targets(self) -> tuple[Target, ...]:
        """The primary upstream, then the fallbacks in order. The handler refuses every request
        before this is read while no key is set, so the primary's empty key never goes out."""
        return (Target("primary", self.base_url, self.api_key or ""), *self.fallbacks)

    def url(self, endpoint: str) -> str:
        """The URL of ``chat``, ``completions`` or ``responses`` on the primary upstream."""
        return self.base_url.rstrip("/") + ENDPOINT_PATHS[endpoint]


ENDPOINT_PATHS: Final[Mapping[str, str]] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "responses": "/responses",
}


class RequestLimits(NamedTuple):
    """What a caller may ask for (``lib/request.py``, ``lib/responses.py``)."""

    default_model: str = default("DEFAULT_MODEL")
    allowed_models: frozenset[str] = default("ALLOWED_MODELS")  # as set; empty: see models
    max_tokens: int = default("MAX_TOKENS")
    max_body_bytes: int = default("MAX_BODY_BYTES")
    max_image_body_bytes: int = default("MAX_IMAGE_BODY_BYTES")
    body_read_timeout: float = default("BODY_READ_TIMEOUT")
    max_prompt_chars: int = default("MAX_PROMPT_CHARS")
    max_messages: int = default("MAX_MESSAGES")
    allowed_params: frozenset[str] = default("ALLOWED_PARAMS")
    ignored_params: frozenset[str] = default("IGNORED_PARAMS")
    image_url_schemes: frozenset[str] = default("IMAGE_URL_SCHEMES")

    @property
    def models(self) -> frozenset[str]:
        """The models a caller may name: ``ALLOWED_MODELS``, or only the default when unset."""
        return self.allowed_models or frozenset((self.default_model,))

    @property
    def body_limit(self) -> int:
        """How much of a body is read: ``MAX_IMAGE_BODY_BYTES`` when images are on (a data URL
        is large), else ``MAX_BODY_BYTES``; ``lib/request.parse_body`` holds image-less bodies
        to the latter."""
        if self.image_url_schemes:
            return max(self.max_body_bytes, self.max_image_body_bytes)
        return self.max_body_bytes


class StreamLimits(NamedTuple):
    """When a stream must end, and the loop detector (``lib/clock.py``, ``lib/deadline.py``)."""

    max_duration: float | None = default("MAX_DURATION")
    deadline_margin: float = default("DEADLINE_MARGIN")
    keepalive_interval: float = default("KEEPALIVE_INTERVAL")
    write_timeout: float = default("CLIENT_WRITE_TIMEOUT")
    max_stream_seconds: float | None = default("MAX_STREAM_SECONDS")
    repetition_window: int = default("REPETITION_WINDOW")
    repetition_max_period: int = default("REPETITION_MAX_PERIOD")


class OutputSettings(NamedTuple):
    """What is written where nothing else decides it."""

    default_format: OutputFormat = default("DEFAULT_FORMAT")
    log_prompts: bool = default("LOG_PROMPTS")


class CORSSettings(NamedTuple):
    """Which browser origins may call (``lib/cors.py``)."""

    allowed_origins: frozenset[str] = default("ALLOWED_ORIGINS")
    max_age: int = default("CORS_MAX_AGE")


class JWTSettings(NamedTuple):
    """Standard JWTs (docs/protection.md): HS256 with a shared secret, provider keys from a
    JWKS, or both. ``None`` in ``Protection.jwt`` when neither is set, and then PyJWT is never
    imported."""

    secret: str | None = default("AUTH_JWT_SECRET")
    jwks_url: str | None = default("AUTH_JWKS_URL")
    issuer: str | None = default("AUTH_JWT_ISSUER")
    audience: tuple[str, ...] = default("AUTH_JWT_AUDIENCE")
    client_claim: str = default("AUTH_JWT_CLIENT_CLAIM")
    origin_claim: str = default("AUTH_JWT_ORIGIN_CLAIM")
    max_lifetime: int = default("AUTH_MAX_TOKEN_LIFETIME")  # protection's, shared
    jwks_cache_seconds: float = default("AUTH_JWKS_CACHE_SECONDS")
    jwks_timeout: float = default("AUTH_JWKS_TIMEOUT")

    def __repr__(self) -> str:
        return redacted_repr(self)


class Protection(NamedTuple):
    """Who may call, and how much (``lib/auth.py``, ``lib/limits.py``): all off by default
    (then a loud warning at start)."""

    auth_tokens: frozenset[str] = default("AUTH_TOKENS")
    auth_signing_secret: str | None = default("AUTH_SIGNING_SECRET")
    rate_limit: Rate | None = default("RATE_LIMIT")
    max_concurrent_streams: int | None = default("MAX_CONCURRENT_STREAMS")
    global_max_concurrent_streams: int | None = default("GLOBAL_MAX_CONCURRENT_STREAMS")
    token_budget: Rate | None = default("TOKEN_BUDGET")
    redis_url: str | None = default("REDIS_URL")
    store_timeout: float = default("STORE_TIMEOUT")
    store_max_connections: int = default("STORE_MAX_CONNECTIONS")
    stream_lease_seconds: float = default("STREAM_LEASE_SECONDS")
    trust_proxy_header: str | None = default("TRUST_PROXY_HEADER")
    auth_max_token_lifetime: int = default("AUTH_MAX_TOKEN_LIFETIME")
    ipv6_prefix: int = default("IPV6_PREFIX")
    jwt: JWTSettings | None = None  # built from the "jwt" rows when a secret or key set is given

    def __repr__(self) -> str:
        return redacted_repr(self)


class Settings(NamedTuple):
    """Everything the function reads from its environment, one group per concern."""

    upstream: UpstreamSettings = UpstreamSettings()
    request: RequestLimits = RequestLimits()
    stream: StreamLimits = StreamLimits()
    protection: Protection = Protection()
    cors: CORSSettings = CORSSettings()
    output: OutputSettings = OutputSettings()


# --- the loader --------------------------------------------------------------------------------


def _read(env: Mapping[str, str], *groups: Group) -> dict[Group, dict[str, Any]]:
    """Every row of the given groups, parsed from ``env`` or defaulted."""
    values: dict[Group, dict[str, Any]] = {group: {} for group in groups}
    for spec in SPECS:
        if spec.group in values:
            raw = env.get(spec.name, "").strip()
            values[spec.group][spec.field] = (
                spec.parse(spec.name, raw, env) if raw else spec.default
            )
    return values


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


def _protection(env: Mapping[str, str], values: dict[Group, dict[str, Any]]) -> Protection:
    protection, jwt = values["protection"], values["jwt"]
    unset = not env.get("TRUST_PROXY_HEADER", "").strip()
    if unset and env.get("VERCEL", "").strip() == "1":
        # On Vercel the edge overwrites this header with the caller's address (docs/protection.md).
        protection["trust_proxy_header"] = "x-vercel-forwarded-for"
    if jwt["secret"] is None and jwt["jwks_url"] is None:
        for name in ("AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"):
            if env.get(name, "").strip():
                raise SettingsError(
                    f"{name} is set but neither AUTH_JWT_SECRET nor AUTH_JWKS_URL is"
                )
        return Protection(**protection)
    if jwt["jwks_url"] is not None and jwt["issuer"] is None:
        # Some key sets sign for many tenants (Firebase's is shared by every project): without
        # an issuer, any of them could call. docs/protection.md has each provider's issuer.
        raise SettingsError("AUTH_JWKS_URL needs AUTH_JWT_ISSUER (the provider's issuer URL)")
    jwt["max_lifetime"] = protection["auth_max_token_lifetime"]
    return Protection(**protection, jwt=JWTSettings(**jwt))


def load_protection(env: Mapping[str, str]) -> Protection:
    """Only the protection group (the limiter's tests build it alone)."""
    return _protection(env, _read(env, "protection", "jwt"))


def load_settings(env: Mapping[str, str], *, root: Path = PROJECT_ROOT) -> Settings:
    """Build the settings once per process; raises SettingsError on an unusable value."""
    values = _read(env, "upstream", "request", "stream", "protection", "jwt", "cors", "output")
    request, stream = values["request"], values["stream"]
    allowed = request["allowed_models"]
    if allowed and request["default_model"] not in allowed:
        raise SettingsError(f"DEFAULT_MODEL={request['default_model']!r} is not in ALLOWED_MODELS")
    stream["max_duration"] = vercel_max_duration(root) or stream["max_duration"]
    # The longest repeating unit the detector looks for is at most half its window.
    longest = max(1, stream["repetition_window"] // 2)
    if env.get("REPETITION_MAX_PERIOD", "").strip():
        if stream["repetition_max_period"] > longest:
            raise SettingsError(
                f"REPETITION_MAX_PERIOD={stream['repetition_max_period']} is outside 1..{longest} "
                "(at most half of REPETITION_WINDOW)"
            )
    else:
        stream["repetition_max_period"] = min(stream["repetition_max_period"], longest)
    return Settings(
        upstream=UpstreamSettings(**values["upstream"]),
        request=RequestLimits(**request),
        stream=StreamLimits(**stream),
        protection=_protection(env, values),
        cors=CORSSettings(**values["cors"]),
        output=OutputSettings(**values["output"]),
    )
