"""One JSON line per request, written when it ends.

The handler (lib/handler.py) makes each HTTP request's :class:`RequestLog` with its id (the
``X-Request-Id`` header on every response, preflights included), fills it in as the request
goes, and writes it when the request ends, status, bytes and duration included: all in the
handler's own frame, so an open stream holds no layer of its own for it. Never the key; never
the prompt unless ``LOG_PROMPTS`` is on. ``json.dumps`` escapes control characters, so a caller
cannot forge log lines through anything we record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from typing import Any

from lib.asgi import Header, Scope
from lib.errors import BreakConnection

logger = logging.getLogger("streaming_function")
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class RequestLog:
    """One request's log line, filled in as the request goes. A plain class, not a dataclass:
    on Python 3.12 making a dataclass compiles its methods, about a millisecond at every cold
    start (docs/decisions.md)."""

    __slots__ = (  # noqa: RUF023 - in the log line's order, request_id first
        "request_id", "method", "status", "shape", "format", "model", "first_upstream_byte_ms",
        "first_event_ms", "duration_ms", "events", "bytes", "finish_reason", "usage",
        "client_disconnected", "error_type", "prompt", "client", "tokens_charged", "upstream",
        "attempts",
    )  # fmt: skip

    def __init__(self, request_id: str, method: str = "") -> None:
        self.request_id = request_id
        self.method = method
        self.status = 0
        self.shape: str | None = None
        self.format: str | None = None
        self.model: str | None = None
        self.first_upstream_byte_ms: float | None = None
        self.first_event_ms: float | None = None
        self.duration_ms = 0.0
        self.events = 0
        self.bytes = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.client_disconnected = False
        self.error_type: str | None = None
        self.prompt: str | None = None
        self.client: str | None = None  # what limits count against: token client id or address
        self.tokens_charged: int | None = None  # settled against TOKEN_BUDGET
        self.upstream: str | None = None  # which upstream served: "primary" or "fallbackN"
        self.attempts = 0  # upstream requests sent, retries and fallbacks included

    def line(self) -> str:
        # Fields read directly, in slot order, with nothing copied.
        record: dict[str, Any] = {"event": "request"}
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        return json.dumps(record, separators=(",", ":"))


def emit(record: RequestLog) -> None:
    logger.info(record.line())


def warn(message: str, **fields: Any) -> None:
    logger.warning(json.dumps({"event": "warning", "message": message, **fields}))


def request_log(scope: Scope) -> RequestLog:
    """A new HTTP request's record, with its id."""
    return RequestLog(request_id=uuid.uuid4().hex, method=scope.get("method", ""))


def id_header(log: RequestLog) -> Header:
    """The ``X-Request-Id`` response header: the id a caller quotes to find the log line."""
    return (b"x-request-id", log.request_id.encode("ascii"))


class _DropBreakConnection(logging.Filter):
    """Drops the server's "Exception in ASGI application" record for a deliberate break: it
    is how a text stream ends on failure, not a bug, and our own log line records the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info
        return not (exc and isinstance(exc[1], BreakConnection))


def quiet_broken_connections(server_logger: str = "uvicorn.error") -> None:
    """Install the filter once on the ASGI server's error logger (uvicorn, which Vercel's
    runtime and the local server run)."""
    target = logging.getLogger(server_logger)
    if not any(isinstance(f, _DropBreakConnection) for f in target.filters):
        target.addFilter(_DropBreakConnection())


def usage_counts(usage: Any) -> dict[str, Any] | None:
    """The integer fields of an upstream ``usage`` object (and of its ``*_details`` objects),
    nothing else: it is the upstream's text going into our log line, so a string (an echoed
    key, say) or a deep structure must not get there."""
    if not isinstance(usage, dict):
        return None
    counts: dict[str, Any] = {}
    for name, value in usage.items():
        if not _is_field_name(name):
            continue
        if _is_count(value):
            counts[name] = value
        elif isinstance(value, dict):
            inner = {k: v for k, v in value.items() if _is_field_name(k) and _is_count(v)}
            if inner:
                counts[name] = inner
    return counts


_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _is_field_name(name: Any) -> bool:
    """A name like OpenAI's (``prompt_tokens``): names are upstream text too."""
    return isinstance(name, str) and _FIELD_NAME.fullmatch(name) is not None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
