"""The two output formats the Vercel AI SDK's clients read: the UI message stream and plain text.

Both take chat- or completion-shaped upstream chunks (``choices[0].delta.content`` or
``choices[0].text``) and are pure, like the formats in ``lib/formats.py``.

- :class:`UIMessageStream` is the AI SDK UI message stream v1 (CONTRACT.md section 3), byte for
  byte what ``streamText(...).toUIMessageStreamResponse()`` writes: ``start``, ``start-step``,
  ``text-start`` (id ``"0"``, sent with the first text), ``text-delta``..., ``text-end``,
  ``finish-step``, ``finish`` with the finish reason, ``[DONE]``. A mid-stream failure is what the
  SDK itself writes when the model fails: an ``error`` part, then ``finish-step`` and ``finish``
  with ``finishReason: "error"``, then ``[DONE]``. The client's schema is strict, so no other
  part types and no extra required fields are ever written. Keep-alive: an SSE comment, which
  the SDK's parser (eventsource-parser) skips.
- :class:`TextStream` is ``text/plain; charset=utf-8``: just the text. It has no in-band error
  channel, so ``fail`` returns ``None`` and the relay breaks the connection (no clean end of the
  chunked body), and no invisible keep-alive: any byte would be part of the answer, and an empty
  chunk cannot be sent (in chunked encoding it *is* the end). Callers that expect long silences
  (reasoning models) should use ``ui`` or ``openai``.
"""

from __future__ import annotations

import json
from typing import Any

from lib.errors import APIError
from lib.formats import SSE_HEADERS, Chunk
from lib.sse import DONE, encode_comment, encode_json

UI_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    *SSE_HEADERS,
    (b"x-vercel-ai-ui-message-stream", b"v1"),
)
TEXT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)

# OpenAI finish_reason -> the AI SDK's FinishReason (the client's schema accepts only these).
FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
}
TEXT_ID = "0"


def text_of(chunk: Chunk) -> str:
    """The text one upstream chunk adds, whichever endpoint served it."""
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return ""
    choice: dict[str, Any] = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def finish_reason_of(chunk: Chunk) -> str | None:
    choices = chunk.get("choices")
    if choices and isinstance(choices, list) and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str):
            return reason
    return None


def ai_sdk_finish_reason(reason: str | None) -> str:
    """The AI SDK's name for an OpenAI finish reason; anything unknown (or none) is ``other``."""
    return FINISH_REASONS.get(reason or "", "other")


class UIMessageStream:
    """AI SDK UI message stream v1, for ``useChat`` (DefaultChatTransport) and ``useCompletion``
    with ``streamProtocol: 'data'``."""

    name = "ui"
    headers = UI_HEADERS

    def __init__(self) -> None:
        self._text_open = False
        self._finish: str | None = None

    def open(self) -> bytes:
        return encode_json({"type": "start"}) + encode_json({"type": "start-step"})

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        reason = finish_reason_of(chunk)
        if reason is not None:
            self._finish = reason
        text = text_of(chunk)
        if not text:
            return b""
        out = b""
        if not self._text_open:
            self._text_open = True
            out = encode_json({"type": "text-start", "id": TEXT_ID})
        return out + encode_json({"type": "text-delta", "id": TEXT_ID, "delta": text})

    def delta(self, data: str, text: str, like: Chunk) -> bytes | None:
        """The relay's fast path for a plain content chunk (see lib/formats.py)."""
        if not text:
            return b""
        if not self._text_open:
            return None  # the first text also opens the text part: chunk() does that
        escaped = text if text.isascii() else json.dumps(text)[1:-1]
        return _TEXT_DELTA_HEAD + escaped.encode("ascii") + _TEXT_DELTA_TAIL

    def _end(self, finish_reason: str) -> bytes:
        out = encode_json({"type": "text-end", "id": TEXT_ID}) if self._text_open else b""
        self._text_open = False
        return (
            out
            + encode_json({"type": "finish-step"})
            + encode_json({"type": "finish", "finishReason": finish_reason})
            + DONE
        )

    def close(self) -> bytes:
        return self._end(ai_sdk_finish_reason(self._finish))

    def fail(self, error: APIError) -> bytes | None:
        return encode_json({"type": "error", "errorText": error.message}) + self._end("error")

    def keepalive(self) -> bytes | None:
        return encode_comment("keep-alive")  # eventsource-parser (inside the AI SDK) skips it


_TEXT_DELTA_HEAD = b'data: {"type":"text-delta","id":"' + TEXT_ID.encode() + b'","delta":"'
_TEXT_DELTA_TAIL = b'"}\n\n'


class TextStream:
    """The generated text alone, for ``useCompletion``/``TextStreamChatTransport`` with the text
    protocol and for ``curl -N``."""

    name = "text"
    headers = TEXT_HEADERS

    def open(self) -> bytes:
        return b""

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        return text_of(chunk).encode("utf-8")

    def delta(self, data: str, text: str, like: Chunk) -> bytes | None:
        """The relay's fast path for a plain content chunk (see lib/formats.py)."""
        return text.encode("utf-8")

    def close(self) -> bytes:
        return b""

    def fail(self, error: APIError) -> bytes | None:
        return None  # no error channel: the relay breaks the connection instead

    def keepalive(self) -> bytes | None:
        return None  # every byte would be part of the answer
