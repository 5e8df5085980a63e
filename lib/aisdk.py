"""The two output formats the Vercel AI SDK's clients read: the UI message stream and plain text.

Both take chat- or completion-shaped upstream chunks (``choices[0].delta.content`` or
``choices[0].text``) and are pure, like the formats in ``lib/formats.py``.

- :class:`UIMessageStream` is the AI SDK UI message stream v1 (docs/protocol.md section 4), byte for
  byte what ``streamText(...).toUIMessageStreamResponse()`` writes: ``start``, ``start-step``,
  ``text-start`` (id ``"0"``, sent with the first text), ``text-delta``..., ``text-end``,
  ``finish-step``, ``finish`` with the finish reason, ``[DONE]``. A mid-stream failure is what the
  SDK itself writes when the model fails: an ``error`` part, then ``finish-step`` and ``finish``
  with ``finishReason: "error"``, then ``[DONE]``. The client's schema is strict, so only part
  types it knows, with their required fields, are ever written. Keep-alive: an SSE comment,
  which the SDK's parser (eventsource-parser) skips.

  Reasoning deltas (``delta.reasoning_content``, or ``delta.reasoning``) become
  ``reasoning-start`` / ``reasoning-delta`` / ``reasoning-end`` (ended before the text starts),
  so a thinking model shows its thoughts instead of a blank screen. Streamed tool calls
  (``delta.tool_calls``, interleaved by ``index``) become ``tool-input-start`` (id and name),
  ``tool-input-delta`` (each arguments fragment) and, once the choice finishes,
  ``tool-input-available`` with the parsed arguments (what makes ``useChat``'s ``onToolCall``
  fire), or ``tool-input-error`` when the arguments are not JSON.
- :class:`TextStream` is ``text/plain; charset=utf-8``: just the text. It has no in-band error
  channel, so ``fail`` returns ``None`` and the relay breaks the connection (no clean end of the
  chunked body), and no invisible keep-alive: any byte would be part of the answer, and an empty
  chunk cannot be sent (in chunked encoding it *is* the end). Callers that expect long silences
  (reasoning models) should use ``ui`` or ``openai``.
"""

from __future__ import annotations

import json
from typing import Any

from lib.asgi import Header
from lib.errors import APIError
from lib.formats import SSE_HEADERS, Chunk, Template
from lib.sse import DONE, encode_comment, encode_json

UI_HEADERS: tuple[Header, ...] = (
    *SSE_HEADERS,
    (b"x-vercel-ai-ui-message-stream", b"v1"),
)
TEXT_HEADERS: tuple[Header, ...] = (
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


def ai_sdk_finish_reason(reason: str | None) -> str:
    """The AI SDK's name for an OpenAI finish reason; anything unknown (or none) is ``other``."""
    return FINISH_REASONS.get(reason or "", "other")


class _ToolCall:
    """One streamed tool call, assembled from its fragments."""

    __slots__ = ("arguments", "delta_head", "id", "name", "started")

    def __init__(self, call_id: str) -> None:
        self.id = call_id
        self.name = ""
        self.arguments: list[str] = []
        self.started = False
        self.delta_head = b""  # its tool-input-delta event up to the text, encoded once


def reasoning_of(delta: dict[str, Any]) -> str:
    """The thinking text of a chat delta: ``reasoning_content`` (DeepSeek, vLLM, Qwen) or
    ``reasoning`` (OpenRouter, Groq)."""
    text = delta.get("reasoning_content")
    if not isinstance(text, str) or not text:
        text = delta.get("reasoning")
    return text if isinstance(text, str) else ""


class UIMessageStream:
    """AI SDK UI message stream v1, for ``useChat`` (DefaultChatTransport) and ``useCompletion``
    with ``streamProtocol: 'data'``."""

    name = "ui"
    headers = UI_HEADERS
    relays_as_is = False

    def __init__(self) -> None:
        self._text_open = False
        self._reasoning_open = False
        self._reasoning_parts = 0
        self._reasoning_head: bytes | None = None  # reasoning-delta up to the text, this part's
        self._finish: str | None = None
        self._calls: dict[int, _ToolCall] = {}
        # The call the template's argument fragments belong to, for the template with this
        # head: found once, not through the template's parsed chunk on every fragment.
        self._call_head = b""
        self._call: _ToolCall | None = None

    def open(self) -> bytes:
        return encode_json({"type": "start"}) + encode_json({"type": "start-step"})

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return b""
        choice: dict[str, Any] = choices[0]
        delta = choice.get("delta")
        out: list[bytes] = []
        if isinstance(delta, dict):
            reasoning = reasoning_of(delta)
            if reasoning:
                if not self._reasoning_open:
                    self._reasoning_open = True
                    start = {"type": "reasoning-start", "id": self._reasoning_id}
                    out.append(encode_json(start))
                part = {"type": "reasoning-delta", "id": self._reasoning_id, "delta": reasoning}
                out.append(encode_json(part))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._text(text))
            calls = delta.get("tool_calls")
            if isinstance(calls, list) and calls:
                self._tool_deltas(calls, out)
        else:
            text = choice.get("text")
            if isinstance(text, str) and text:
                out.append(self._text(text))
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            self._finish = reason
            out.append(self._tools_available())
        return b"".join(out)

    @property
    def _reasoning_id(self) -> str:
        return f"reasoning-{self._reasoning_parts}"

    def _close_reasoning(self) -> bytes:
        """End the open reasoning part; thinking that resumes later gets a part of its own."""
        if not self._reasoning_open:
            return b""
        self._reasoning_open = False
        end = encode_json({"type": "reasoning-end", "id": self._reasoning_id})
        self._reasoning_parts += 1
        self._reasoning_head = None
        return end

    def _text(self, text: str) -> bytes:
        out = self._close_reasoning()
        if not self._text_open:
            self._text_open = True
            out += encode_json({"type": "text-start", "id": TEXT_ID})
        return out + encode_json({"type": "text-delta", "id": TEXT_ID, "delta": text})

    def _tool_deltas(self, calls: list[Any], out: list[bytes]) -> None:
        out.append(self._close_reasoning())
        for position, item in enumerate(calls):
            if not isinstance(item, dict):
                continue
            index = item.get("index", position)
            if not isinstance(index, int):
                continue
            call = self._calls.get(index)
            call_id = item.get("id")
            if call is None:
                call = self._calls[index] = _ToolCall(
                    call_id if isinstance(call_id, str) and call_id else f"call-{index}"
                )
            function = item.get("function")
            if not isinstance(function, dict):
                continue
            name = function.get("name")
            if isinstance(name, str) and name and not call.name:
                call.name = name
            fragment = function.get("arguments")
            fragment = fragment if isinstance(fragment, str) else ""
            if fragment:
                call.arguments.append(fragment)
            if not call.started:
                if not call.name:
                    continue  # held until the name arrives
                call.started = True
                start = {"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name}
                out.append(encode_json(start))
                fragment = "".join(call.arguments)  # with any that came before the name
            if fragment:
                delta = {
                    "type": "tool-input-delta",
                    "toolCallId": call.id,
                    "inputTextDelta": fragment,
                }
                out.append(encode_json(delta))

    def _tools_available(self) -> bytes:
        """Each assembled call with its parsed input (or the error the AI SDK reports)."""
        out: list[bytes] = []
        for call in self._calls.values():
            name = call.name or "unknown"
            if not call.started:
                start = {"type": "tool-input-start", "toolCallId": call.id, "toolName": name}
                out.append(encode_json(start))
            raw = "".join(call.arguments)
            part: dict[str, Any]
            try:
                parsed = json.loads(raw) if raw.strip() else {}
            except ValueError:
                part = {
                    "type": "tool-input-error",
                    "toolCallId": call.id,
                    "toolName": name,
                    "input": raw,
                    "errorText": "The model sent tool arguments that are not valid JSON.",
                }
            else:
                part = {
                    "type": "tool-input-available",
                    "toolCallId": call.id,
                    "toolName": name,
                    "input": parsed,
                }
            out.append(encode_json(part))
        self._calls.clear()
        self._call = None
        return b"".join(out)

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """The relay's fast path for a plain content chunk (see lib/formats.py)."""
        if not text:
            return b""
        if not self._text_open or self._reasoning_open:
            return None  # the first text also opens the text part: chunk() does that
        escaped = text if text.isascii() else json.dumps(text)[1:-1]
        return _TEXT_DELTA_HEAD + escaped.encode("ascii") + _TEXT_DELTA_TAIL

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        """The fast path for reasoning and tool-argument chunks, once their part is open."""
        if kind == "arguments":
            call = self._call
            if call is None or template.head is not self._call_head:
                index = template.like["choices"][0]["delta"]["tool_calls"][0]["index"]
                call = self._call = self._calls.get(index)
                self._call_head = template.head
            if call is None or not call.started or self._reasoning_open:
                return None  # the slow path opens the call (or ends the reasoning) first
            if not text:
                return b""
            call.arguments.append(text)
            if not call.delta_head:
                part = {"type": "tool-input-delta", "toolCallId": call.id, "inputTextDelta": ""}
                call.delta_head = _head_of(part)
            return _spliced(call.delta_head, text)
        if not self._reasoning_open:
            return None  # the first thought also opens the reasoning part: chunk() does that
        if not text:
            return b""
        head = self._reasoning_head
        if head is None:
            part = {"type": "reasoning-delta", "id": self._reasoning_id, "delta": ""}
            head = self._reasoning_head = _head_of(part)
        return _spliced(head, text)

    def _end(self, finish_reason: str) -> bytes:
        out = self._close_reasoning()
        if self._text_open:
            out += encode_json({"type": "text-end", "id": TEXT_ID})
        self._text_open = False
        return (
            out
            + encode_json({"type": "finish-step"})
            + encode_json({"type": "finish", "finishReason": finish_reason})
            + DONE
        )

    def close(self) -> bytes:
        return self._tools_available() + self._end(ai_sdk_finish_reason(self._finish))

    def fail(self, error: APIError) -> bytes | None:
        return encode_json({"type": "error", "errorText": error.message}) + self._end("error")

    def keepalive(self) -> bytes | None:
        return encode_comment("keep-alive")  # eventsource-parser (inside the AI SDK) skips it


_TEXT_DELTA_HEAD = b'data: {"type":"text-delta","id":"' + TEXT_ID.encode() + b'","delta":"'
_TEXT_DELTA_TAIL = b'"}\n\n'


def _head_of(part: dict[str, str]) -> bytes:
    """``encode_json(part)`` up to its last member, an empty string, and that string's opening
    quote: the fast path's deltas splice their text in there, once per part, not a dict and an
    encoding per delta."""
    whole = encode_json(part)
    assert whole.endswith(_TEXT_DELTA_TAIL)
    return whole[: -len(_TEXT_DELTA_TAIL)]


def _spliced(head: bytes, text: str) -> bytes:
    """What ``encode_json`` gives for the part with ``text`` as its last member: the fast path's
    text has no quote, backslash or control character, so its JSON form is itself with
    non-ASCII escaped."""
    escaped = text if text.isascii() else json.dumps(text)[1:-1]
    return head + escaped.encode("ascii") + _TEXT_DELTA_TAIL


class TextStream:
    """The generated text alone, for ``useCompletion``/``TextStreamChatTransport`` with the text
    protocol and for ``curl -N``."""

    name = "text"
    headers = TEXT_HEADERS
    relays_as_is = False

    def open(self) -> bytes:
        return b""

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        return text_of(chunk).encode("utf-8")

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """The relay's fast path for a plain content chunk (see lib/formats.py)."""
        return text.encode("utf-8")

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        return b""  # reasoning is not part of the text (and tools never reach this format)

    def close(self) -> bytes:
        return b""

    def fail(self, error: APIError) -> bytes | None:
        return None  # no error channel: the relay breaks the connection instead

    def keepalive(self) -> bytes | None:
        return None  # every byte would be part of the answer
