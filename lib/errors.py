"""The one error tree of the function.

Every failure the caller can see is an :class:`APIError`. Each class knows the HTTP status to
answer with before the response has started, and a stable ``type`` string. Before the stream
starts an error becomes the JSON envelope below with its status; once the stream has started it
becomes the in-band error of the caller's format (see ``lib/formats.py``)::

    {"error": {"type": "...", "message": "<what is wrong, plainly>", "param": "<field or null>"}}

    APIError                          500 server_error
    ├── RequestError                  400 invalid_request_error   the caller's request is wrong
    │   ├── MethodNotAllowed          405 method_not_allowed
    │   ├── NotFound                  404 not_found               no such path or model
    │   ├── UnsupportedMediaType      415 unsupported_media_type
    │   ├── BodyTooLarge              413 request_too_large
    │   ├── RequestTimeout            408 request_timeout         the body came too slowly
    │   └── UpstreamRejectedRequest   400 invalid_request_error   upstream said 400/404/422
    ├── ConfigurationError            500 configuration_error     the deployment is misconfigured
    ├── UpstreamError                 502 upstream_error          the provider failed us
    │   ├── UpstreamAuthError         502 upstream_auth_error     it rejected the server's key
    │   ├── UpstreamRateLimited       429 rate_limit_error        it said 429 (Retry-After kept)
    │   ├── UpstreamTimeout           504 upstream_timeout        no answer in time
    │   ├── UpstreamProtocolError     502 upstream_protocol_error not an event stream, bad JSON
    │   │   └── UpstreamLineTooLong   502                         one SSE line over the limit
    │   ├── UpstreamBroken            502 upstream_error          connection broke mid-stream
    │   ├── UpstreamTruncated         502 upstream_error          ended without [DONE]
    │   ├── UpstreamStreamError       502 upstream_error          in-band error from upstream
    │   └── RepetitiveOutput          502 repetitive_output       the model is looping
    ├── DeadlineExceeded              504 deadline_exceeded       the function's time is up
    │   └── StreamTooLong             504 stream_duration_exceeded  MAX_STREAM_SECONDS reached
    ├── AuthenticationError           401 authentication_error    no or bad bearer token
    ├── AuthUnavailable               503 auth_unavailable        no provider keys to check with
    ├── RateLimited                   429 rate_limit_exceeded     a request or stream limit
    │   └── BudgetExhausted           429 insufficient_quota      the token budget is spent
    └── StoreUnavailable              503 store_unavailable       the limit store did not answer

An ``UpstreamError`` raised before the stream also says whether asking again may help
(``upstream_status``, ``retry_headers``, ``connect_failure``; see ``lib/retry.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar


class APIError(Exception):
    """Raised for anything the caller should be told about."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The error object (without the outer ``error`` key)."""
        return {"type": self.type, "message": self.message, "param": self.param}

    def envelope(self) -> dict[str, Any]:
        return {"error": self.body()}

    def to_json(self) -> bytes:
        return json.dumps(self.envelope(), separators=(",", ":")).encode("ascii")


class RequestError(APIError):
    """Raised when the caller's request is malformed or out of range."""

    status = 400
    type = "invalid_request_error"


class MethodNotAllowed(RequestError):
    """Raised for any method other than POST and OPTIONS."""

    status = 405
    type = "method_not_allowed"


class NotFound(RequestError):
    """Raised for an unknown ``/api/v1`` path, or a model this deployment does not serve."""

    status = 404
    type = "not_found"


class UnsupportedMediaType(RequestError):
    """Raised when the body is not declared as JSON."""

    status = 415
    type = "unsupported_media_type"


class BodyTooLarge(RequestError):
    """Raised as soon as the body passes the size cap, before reading the rest."""

    status = 413
    type = "request_too_large"


class RequestTimeout(RequestError):
    """Raised when the body has not arrived within ``BODY_READ_TIMEOUT``."""

    status = 408
    type = "request_timeout"


class UpstreamRejectedRequest(RequestError):
    """Raised when the provider rejects the request's content (400, 422, unknown model)."""


class ConfigurationError(APIError):
    """Raised when the deployment lacks a setting it needs (never the caller's fault)."""

    status = 500
    type = "configuration_error"


class UpstreamError(APIError):
    """Raised when the provider fails: 5xx, refused connection, unexpected answer."""

    status = 502
    type = "upstream_error"

    # Set where the failure is translated (lib/upstream.py), read by the retry policy.
    upstream_status: int | None = None  # the provider's HTTP status, if it answered
    retry_headers: Mapping[str, str] = MappingProxyType({})  # lower-case names
    connect_failure: bool = False  # refused, reset or silent before any answer


class UpstreamAuthError(UpstreamError):
    """Raised when the provider rejects the server's own credentials (401, 403)."""

    type = "upstream_auth_error"


class UpstreamRateLimited(UpstreamError):
    """Raised when the provider answers 429; its Retry-After travels on."""

    status = 429
    type = "rate_limit_error"


class UpstreamTimeout(UpstreamError):
    """Raised when the provider does not connect, answer or send in time."""

    status = 504
    type = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    """Raised when the provider's answer is not the stream we asked for."""

    type = "upstream_protocol_error"


class UpstreamLineTooLong(UpstreamProtocolError):
    """Raised when one SSE line exceeds the configured limit (memory stays bounded)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The upstream sent a stream line longer than {limit} bytes.")
        self.limit = limit


class UpstreamBroken(UpstreamError):
    """Raised when the provider's connection breaks after the stream started."""


class UpstreamTruncated(UpstreamError):
    """Raised when the provider's stream ends without [DONE] or a finish reason."""


class UpstreamStreamError(UpstreamError):
    """Raised when the provider sends an error event inside the stream."""


class DeadlineExceeded(APIError):
    """Raised when the invocation's time limit (minus the margin) is reached."""

    status = 504
    type = "deadline_exceeded"


class AuthenticationError(APIError):
    """Raised when authentication is on and the bearer token is missing, unknown or expired."""

    status = 401
    type = "authentication_error"


class AuthUnavailable(APIError):
    """Raised when a provider JWT arrives but the provider's key set (AUTH_JWKS_URL) could not
    be fetched: the token may well be good, so this is the function's failure, not a 401."""

    status = 503
    type = "auth_unavailable"


class RateLimited(APIError):
    """Raised when a caller is over a request-rate or concurrent-stream limit (429)."""

    status = 429
    type = "rate_limit_exceeded"


class BudgetExhausted(RateLimited):
    """Raised when a caller's token budget for the period is spent (429, not worth retrying)."""

    type = "insufficient_quota"


class StoreUnavailable(APIError):
    """Raised when the limit store cannot be reached in time and a budget must fail closed."""

    status = 503
    type = "store_unavailable"


class RepetitiveOutput(UpstreamError):
    """Raised when the model's text keeps repeating one short passage (see lib/repetition.py)."""

    type = "repetitive_output"


class StreamTooLong(DeadlineExceeded):
    """Raised when a stream reaches MAX_STREAM_SECONDS, however much time the platform allows."""

    type = "stream_duration_exceeded"


def redact(message: str, secret: str | None, limit: int = 1000) -> str:
    """Upstream text on its way to a caller or a log: never with the key (or a long prefix of
    it, as providers echo in "Incorrect API key provided: sk-abc...")."""
    message = message[:limit]
    if secret:
        message = message.replace(secret, "[redacted]")
        if len(secret) >= 12:
            message = message.replace(secret[:8], "[redacted]")
    return message


SECRET_FIELDS = frozenset({"api_key", "auth_tokens", "auth_signing_secret", "secret"})


def redacted_repr(record: Any) -> str:
    """A settings record's repr (a named tuple) with each secret field shown only as set, never
    its value: a record printed while debugging must not put a key in a log."""
    shown = (
        f"{name}=[redacted]" if name in SECRET_FIELDS and value else f"{name}={value!r}"
        for name, value in zip(record._fields, record, strict=True)
    )
    return f"{type(record).__name__}({', '.join(shown)})"


class BreakConnection(Exception):
    """Raised to make the server drop the connection: the only honest end for a failed stream
    in a format without an in-band error channel (the plain text stream)."""
