"""Output formats: what the caller receives for each upstream chunk.

A format turns parsed upstream chunks (chat or completion shaped, whichever endpoint served the
request) into whole output events, and knows how to end: cleanly, or with an in-band error the
caller's client understands. The relay owns timing and I/O; formats are pure.

OpenAI-compatible output is canonical (CONTRACT.md section 2): LF line ends, one ``data:`` line
of compact JSON per event with every non-ASCII character escaped, so that a reader that decodes
each network read on its own cannot corrupt a character. A chunk that already is canonical and
needs no change goes through as the upstream's own text (no JSON round trip).
"""

from __future__ import annotations

from typing import Any, Protocol

from lib.errors import APIError
from lib.sse import DONE, encode_comment, encode_json

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)

Chunk = dict[str, Any]


class Format(Protocol):
    """The contract between the relay and an output format."""

    name: str
    headers: tuple[tuple[bytes, bytes], ...]

    def open(self) -> bytes:
        """Bytes to send right after the headers (may be empty)."""
        ...

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        """One upstream chunk (its raw JSON text and parsed form) as output bytes."""
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


def _canonical(data: str) -> bool:
    """True when the upstream's JSON text can be relayed as it is: one line, ASCII only, and
    compact (no space after the key separator, which is where non-compact encoders put one)."""
    return data.isascii() and "\n" not in data and '": ' not in data and '", "' not in data


def _event(data: str) -> bytes:
    return b"data: " + data.encode("ascii") + b"\n\n"


class OpenAIChat:
    """``chat.completion.chunk`` events, for ``messages`` requests (and the openai SDKs)."""

    name = "openai"
    headers = SSE_HEADERS

    def __init__(self, *, include_usage: bool) -> None:
        self._include_usage = include_usage

    def open(self) -> bytes:
        return b""

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        if not chunk.get("choices") and "usage" in chunk and not self._include_usage:
            return b""  # asked for our own accounting, not by the caller
        if _canonical(data):
            return _event(data)
        return encode_json(chunk)

    def close(self) -> bytes:
        return DONE

    def fail(self, error: APIError) -> bytes | None:
        return encode_json(error.envelope())

    def keepalive(self) -> bytes | None:
        return encode_comment("keep-alive")  # the openai SDKs and eventsource-parser skip it


class OpenAICompletion(OpenAIChat):
    """``text_completion`` events (``choices[0].text``), for ``prompt`` requests: the shape the
    classic browser helper reads, whether the upstream served chat or legacy completions."""

    def chunk(self, data: str, chunk: Chunk) -> bytes:
        if chunk.get("object") != "chat.completion.chunk":
            return super().chunk(data, chunk)
        if not chunk.get("choices") and "usage" in chunk and not self._include_usage:
            return b""
        return encode_json(to_completion(chunk))

    def keepalive(self) -> bytes | None:
        # The classic helper JSON-parses every event and reads choices[0].text: a comment would
        # break it (CONTRACT.md section 6), an empty text chunk cannot.
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
