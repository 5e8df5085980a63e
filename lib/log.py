"""One JSON line per request, written when it ends, by the outermost middleware.

:class:`RequestLogging` gives each HTTP request its id (the ``X-Request-Id`` header on every
response, preflights included) and its :class:`RequestLog`, which the handler fills in through
:func:`request_log`; status, bytes and duration it records itself, from the messages it passes
on. Never the key; never the prompt unless ``LOG_PROMPTS`` is on. ``json.dumps`` escapes
control characters, so a caller cannot forge log lines through anything we record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from lib.asgi import App, Message, Receive, Scope, Send
from lib.errors import BreakConnection

logger = logging.getLogger("streaming_function")
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_SCOPE_KEY = "streaming_function.log"


@dataclass(slots=True)
class RequestLog:
    request_id: str
    method: str = ""
    status: int = 0
    shape: str | None = None
    format: str | None = None
    model: str | None = None
    first_upstream_byte_ms: float | None = None
    first_event_ms: float | None = None
    duration_ms: float = 0.0
    events: int = 0
    bytes: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    client_disconnected: bool = False
    error_type: str | None = None
    prompt: str | None = None
    client: str | None = None  # what limits count against: token client id or address
    tokens_charged: int | None = None  # settled against TOKEN_BUDGET
    upstream: str | None = None  # which upstream served: "primary" or "fallbackN" (never a key)
    attempts: int = 0  # upstream requests sent, retries and fallbacks included

    def line(self) -> str:
        # Fields read directly, not through dataclasses.asdict, which deep-copies (a tenth of
        # a request's own CPU, measured with the pass-through beside it).
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
    """This request's log record, made by :class:`RequestLogging`."""
    record: RequestLog = scope[_SCOPE_KEY]
    return record


class RequestLogging:
    """ASGI middleware, outermost: a request id and one log line for every HTTP request."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        log = RequestLog(request_id=uuid.uuid4().hex, method=scope.get("method", ""))
        send_logged = _LoggedSend(log, send)
        # Set on the server's own scope, as Starlette sets its keys: this is the outermost
        # layer, and a copy would cost every open stream a dict the size of the scope.
        scope[_SCOPE_KEY] = log
        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.duration_ms = round((loop.time() - started) * 1000, 2)
            emit(log)


class _LoggedSend:
    """``send`` that notes the status and the body bytes in the record and adds the request id
    to the response start. Not a coroutine: it hands back the server's own awaitable, so a
    write pays no extra coroutine, and a slotted object holds less per open stream than a
    closure and its cells."""

    __slots__ = ("_log", "_send")

    def __init__(self, log: RequestLog, send: Send) -> None:
        self._log = log
        self._send = send

    def __call__(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.body":
            self._log.bytes += len(message.get("body", b""))
        elif kind == "http.response.start":
            self._log.status = message["status"]
            id_header = (b"x-request-id", self._log.request_id.encode("ascii"))
            message = {**message, "headers": [*message.get("headers", ()), id_header]}
        return self._send(message)


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
