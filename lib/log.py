"""One JSON line per request, written when it ends.

Never the key; never the prompt unless ``LOG_PROMPTS`` is on. ``json.dumps`` escapes control
characters, so a caller cannot forge log lines through anything we record.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger("streaming_function")
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
