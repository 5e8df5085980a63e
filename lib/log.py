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
import sys
import uuid
from dataclasses import asdict, dataclass
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
        record = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps({"event": "request", **record}, separators=(",", ":"))


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
        id_header = (b"x-request-id", log.request_id.encode("ascii"))

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.body":
                log.bytes += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                log.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.app({**scope, _SCOPE_KEY: log}, receive, send_logged)
        finally:
            log.duration_ms = round((loop.time() - started) * 1000, 2)
            emit(log)


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
