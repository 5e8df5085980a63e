"""The Format protocol, and the OpenAI formats: chat and completion chunks, one JSON object.

A format turns parsed upstream chunks (chat or completion shaped, whichever endpoint served the
request) into whole output events, and knows how to end: cleanly, or with an in-band error the
caller's client understands. The translator (``lib/translate.py``) feeds it and the pump
(``lib/relay.py``) owns timing and I/O; formats are pure. docs/protocol.md has every format.

OpenAI-compatible output is canonical (docs/protocol.md section 2): LF line ends, one ``data:`` line
of compact JSON per event with every non-ASCII character escaped, so that a reader that decodes
each network read on its own cannot corrupt a character. A chunk that already is canonical and
needs no change goes through as the upstream's own text (no JSON round trip).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from lib.asgi import Header
from lib.errors import APIError
from lib.sse import DONE, encode_comment, encode_json

SSE_HEADERS: tuple[Header, ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)

Chunk = dict[str, Any]


class Template(Protocol):
    """What the fast path hands a format about a stream's plain chunks
    (lib/translate.ContentTemplate)."""

    head: bytes  # the event before its string: b"data: " and the JSON up to the string

    @property
    def canonical(self) -> bool:
        """Whether that event, and all of it after the string, is what encode_json writes."""
        ...

    @property
    def like(self) -> Chunk:
        """A parsed chunk identical to the one relayed but for its string."""
        ...


class Format(Protocol):
    """What differs per output format; :class:`lib.translate.Translator` does the rest.

    Every method is pure: it returns bytes and writes nothing. ``chunk`` gets every parsed
    upstream chunk (already checked for shape, errors and ``[DONE]``); ``delta`` and
    ``other_delta`` are its fast path for chunks left unparsed, and must return exactly what
    ``chunk`` would for them, or None to have the chunk parsed and given to ``chunk`` after all.
    """

    name: str
    headers: tuple[Header, ...]
    # True: a plain chunk's event goes out as the upstream sent it whenever it is ASCII and the
    # template canonical (exactly what ``chunk`` would write), and the translator writes it
    # without asking ``delta`` or ``other_delta``: two calls less per token of a chat stream.
    relays_as_is: bool

    def open(self) -> bytes:
        """Bytes to send right after the headers (may be empty)."""
        ...

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        """One upstream chunk (its raw JSON text and parsed form) as output bytes."""
        ...

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """A plain content chunk left unparsed (lib/translate.py, ContentTemplate): its whole
        event as the upstream sent it (``data: ``, the JSON, a blank line), its text (no
        quote, backslash or control character) and the template, whose ``like`` is a parsed
        chunk identical but for the text (parsed when first asked for: ask only when the
        answer needs it)."""
        ...

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        """The same for a chunk whose delta holds only reasoning (``kind`` reasoning_content or
        reasoning) or only one tool call's next arguments fragment (``kind`` arguments)."""
        ...

    def close(self) -> bytes:
        """The clean end of a complete answer."""
        ...

    def fail(self, error: APIError) -> bytes | None:
        """The in-band error; None means the format has none and the connection must break."""
        ...

    def keepalive(self) -> bytes | None:
        """Bytes that keep proxies and browsers from timing out; None: send nothing."""
        ...


def _as_is(data: str) -> bytes | None:
    """The event for the upstream's JSON text as it is, when that is canonical: one line, ASCII
    only, and compact (no space after the key separator, which is where non-compact encoders
    put one); else None. One call per relayed token, so the test and the framing are one."""
    if data.isascii() and "\n" not in data and '": ' not in data and '", "' not in data:
        return b"data: " + data.encode("ascii") + b"\n\n"
    return None


def _plain_as_is(event: bytes, text: str, template: Template) -> bytes | None:
    """A plain chunk's event (one line, matched by the template) as the upstream sent it, when
    that is what :meth:`OpenAIChat.chunk` would write for it: ASCII, and compact like
    :func:`_as_is` asks or exactly what encode_json writes; else with its string's non-ASCII
    escaped when only that is not canonical (raw UTF-8, as OpenAI sends it); else None."""
    if event.isascii():
        # find, not ``in``: ``in`` on bytes first tries the needle as an int (an exception).
        if template.canonical or (event.find(b'": ') < 0 and event.find(b'", "') < 0):
            return event
        return None
    if not template.canonical:
        return None
    head = template.head
    rest = event[event.index(b'"', len(head)) :]  # the text has no quote: its end, OpenAI's padding
    if not rest.isascii():
        return None
    return head + _ESCAPE.encode(text)[1:-1].encode("ascii") + rest


class OpenAIChat:
    """``chat.completion.chunk`` events, for ``messages`` requests (and the openai SDKs)."""

    name = "openai"
    headers = SSE_HEADERS
    relays_as_is = True

    def __init__(self, *, include_usage: bool) -> None:
        self._include_usage = include_usage
        # Made on first use: a chat stream relayed as it is never needs one.
        self._splice: _Splice | None = None

    def open(self) -> bytes:
        return b""

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        if not chunk.get("choices") and "usage" in chunk and not self._include_usage:
            return b""  # asked for our own accounting, not by the caller
        out = _as_is(data)
        return encode_json(chunk) if out is None else out

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """A plain content chunk: as it is when canonical, else re-encoded around its text."""
        out = _plain_as_is(event, text, template)
        if out is not None:
            return out
        like = template.like
        # OpenAI's padding differs in every chunk, and is relayed: not in the template's chunk.
        return None if "obfuscation" in like else self._spliced(like, text)

    def _spliced(self, like: Chunk, text: str) -> bytes | None:
        splice = self._splice
        if splice is None:
            splice = self._splice = _Splice(self._with_text)
        return splice.event(like, text)

    @staticmethod
    def _with_text(like: Chunk, text: str) -> Chunk:
        choice = like["choices"][0]
        return {**like, "choices": [{**choice, "delta": {**choice["delta"], "content": text}}]}

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        """Reasoning and tool-argument chunks: relayed as they are when canonical, their
        string's non-ASCII escaped when only that is not."""
        return _plain_as_is(event, text, template)

    def close(self) -> bytes:
        return DONE

    def fail(self, error: APIError) -> bytes | None:
        return encode_json(error.envelope())

    def keepalive(self) -> bytes | None:
        return encode_comment("keep-alive")  # the openai SDKs and eventsource-parser skip it


class OpenAICompletion(OpenAIChat):
    """``text_completion`` events (``choices[0].text``), for ``prompt`` requests: the shape the
    classic browser helper reads, whether the upstream served chat or legacy completions."""

    relays_as_is = False  # a chat chunk is converted

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        if chunk.get("object") != "chat.completion.chunk":
            return super().chunk(data, chunk)
        if not chunk.get("choices") and "usage" in chunk and not self._include_usage:
            return b""
        return encode_json(to_completion(chunk))

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """A plain content chunk: the completion chunk around the text is encoded once."""
        like = template.like
        if like.get("object") != "chat.completion.chunk":
            return None
        splice = self._splice  # every token of a completion stream: no call for it
        if splice is None:
            splice = self._splice = _Splice(self._with_text)
        return splice.event(like, text)

    @staticmethod
    def _with_text(like: Chunk, text: str) -> Chunk:
        completion = to_completion(like)
        completion["choices"][0]["text"] = text
        return completion

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        return None  # converted on the slow path (completion chunks have no such fields)

    def keepalive(self) -> bytes | None:
        # The classic helper JSON-parses every event and reads choices[0].text: a comment would
        # break it (docs/protocol.md section 3), an empty text chunk cannot.
        return KEEPALIVE_COMPLETION


KEEPALIVE_COMPLETION = encode_json(
    {
        "id": "keepalive",
        "object": "text_completion",
        "created": 0,
        "model": "",
        "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": None}],
    }
)


class _Splice:
    """Output events for chunks that differ only in their text: the output JSON around the text
    is encoded once per template chunk (``like``) and each text is spliced in. The text has no
    quote, backslash or control character, so its JSON form is itself with non-ASCII escaped:
    the bytes are exactly ``encode_json`` of the whole chunk."""

    __slots__ = ("_build", "_head", "_like", "_tail")

    def __init__(self, build: Callable[[Chunk, str], Chunk]) -> None:
        self._build = build  # (like, text) -> the output chunk with that text
        self._like: Chunk | None = None
        self._head: bytes | None = None
        self._tail = b""

    def event(self, like: Chunk, text: str) -> bytes | None:
        if like is not self._like:
            whole = encode_json(self._build(like, _MARKER))
            self._like, self._head = like, None
            if whole.count(_MARKER_JSON) == 1:
                cut = whole.index(_MARKER_JSON)
                self._head, self._tail = whole[:cut], whole[cut + len(_MARKER_JSON) :]
        if self._head is None:
            return None
        if text.isascii():
            return self._head + text.encode("ascii") + self._tail
        return self._head + _ESCAPE.encode(text)[1:-1].encode("ascii") + self._tail


_MARKER = "\x00splice\x00"
_MARKER_JSON = b"\\u0000splice\\u0000"
_ESCAPE = json.JSONEncoder(ensure_ascii=True)  # the string encoder encode_json uses


def to_completion(chunk: Chunk) -> Chunk:
    """A chat chunk in completion shape: ``delta.content`` becomes ``text``."""
    choices = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("content")
        choices.append(
            {
                "text": text if isinstance(text, str) else "",
                "index": choice.get("index", 0),
                "logprobs": None,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    result: Chunk = {
        "id": chunk.get("id", ""),
        "object": "text_completion",
        "created": chunk.get("created", 0),
        "model": chunk.get("model", ""),
        "choices": choices,
    }
    if chunk.get("usage") is not None:
        result["usage"] = chunk["usage"]
    return result


JSON_HEADERS: tuple[Header, ...] = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
)


class WholeResponse:
    """One ``chat.completion`` (or, for ``prompt`` callers, ``text_completion``) object, for
    callers that did not ask to stream (the openai SDKs' default, the AI SDK's generateText).

    The upstream is still streamed, under the same limits and deadline; this format gathers the
    chunks (text, reasoning, tool calls by index, refusal, logprobs, usage) and writes nothing
    until :meth:`close`. A failure on the way becomes the JSON error with its status, since no
    byte has gone out (``fail`` is never asked for).
    """

    name = "json"
    headers = JSON_HEADERS
    relays_as_is = False

    def __init__(self, *, shape: str) -> None:
        self._chat = shape == "chat"
        self.accepted = False  # the upstream took the request: what it spent counts
        self.chunks = 0
        self._meta: Chunk = {}
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._reasoning_key = "reasoning_content"
        self._refusal: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._logprobs: dict[str, list[Any]] = {}
        self._finish: str | None = None
        self._usage: Any = None

    def open(self) -> bytes:
        return b""

    def _learn(self, chunk: Chunk) -> None:
        if not self._meta:
            self._meta = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
            if chunk.get("system_fingerprint") is not None:
                self._meta["system_fingerprint"] = chunk["system_fingerprint"]

    def delta(self, event: bytes, text: str, template: Template) -> bytes | None:
        """The relay's fast path for a plain content chunk: its text is all it adds."""
        if not self._meta:  # learned from the chunk the template came from, as a rule
            self._learn(template.like)
        self.chunks += 1
        self._text.append(text)
        return b""

    def other_delta(self, kind: str, event: bytes, text: str, template: Template) -> bytes | None:
        """The fast path for reasoning and tool-argument chunks (see :meth:`delta`)."""
        if kind == "arguments":
            call = self._calls.get(template.like["choices"][0]["delta"]["tool_calls"][0]["index"])
            if call is None:
                return None  # a call's first fragment: the slow path opens it
            call["function"]["arguments"] += text
        elif text:
            self._reasoning_key = kind
            self._reasoning.append(text)
        if not self._meta:  # learned from the chunk the template came from, as a rule
            self._learn(template.like)
        self.chunks += 1
        return b""

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        self._learn(chunk)
        self.chunks += 1
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return b""
        choice: dict[str, Any] = choices[0]
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            text = choice.get("text")
            if isinstance(text, str):
                self._text.append(text)
            return b""
        self._gather(delta)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            for key in ("content", "refusal"):
                if isinstance(logprobs.get(key), list):
                    self._logprobs.setdefault(key, []).extend(logprobs[key])
        return b""

    def _gather(self, delta: dict[str, Any]) -> None:
        for key, into in (("content", self._text), ("refusal", self._refusal)):
            if isinstance(delta.get(key), str):
                into.append(delta[key])
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str) and delta[key]:
                self._reasoning_key = key
                self._reasoning.append(delta[key])
        calls = delta.get("tool_calls")
        for position, item in enumerate(calls if isinstance(calls, list) else ()):
            if not isinstance(item, dict):
                continue
            index = item.get("index", position)
            call = self._calls.setdefault(
                index if isinstance(index, int) else position,
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if isinstance(item.get("id"), str):
                call["id"] = call["id"] or item["id"]
            function = item.get("function")
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    if isinstance(function.get(key), str):
                        call["function"][key] += function[key]

    def body(self) -> Chunk:
        """The whole answer, in the shape the caller's SDK parses."""
        text = "".join(self._text)
        meta = {"id": "", "created": 0, "model": "", **self._meta}
        if not self._chat:
            choice: Chunk = {"text": text, "index": 0, "logprobs": None}
            choice["finish_reason"] = self._finish
            result: Chunk = {"id": meta["id"], "object": "text_completion"}
        else:
            message: Chunk = {"role": "assistant", "content": text}
            if self._calls:
                message["content"] = text or None
                calls = [self._calls[i] for i in sorted(self._calls)]
                for index, call in zip(sorted(self._calls), calls, strict=True):
                    call["id"] = call["id"] or f"call-{index}"  # as the ui format names it
                message["tool_calls"] = calls
            message["refusal"] = "".join(self._refusal) or None
            if self._reasoning:
                message[self._reasoning_key] = "".join(self._reasoning)
            choice = {"index": 0, "message": message, "logprobs": self._logprobs or None}
            choice["finish_reason"] = self._finish
            result = {"id": meta["id"], "object": "chat.completion"}
        result.update({k: v for k, v in meta.items() if k != "id"})
        result["choices"] = [choice]
        if self._usage is not None:
            result["usage"] = self._usage
        return result

    def close(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode("ascii")

    def fail(self, error: APIError) -> bytes | None:
        return None  # not reached: the relay answers the error with its status instead

    def keepalive(self) -> bytes | None:
        return None  # a JSON body has no room for one before it is complete
