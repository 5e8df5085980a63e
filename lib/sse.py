"""Sans-I/O Server-Sent Events: a decoder fed bytes that returns events, and encoders that are
its inverse.

The decoder follows the WHATWG HTML "event stream interpretation" rules: CR, LF and CRLF line
ends (and no others: U+2028, U+2029 and NEL are ordinary characters); a leading UTF-8 BOM is
dropped; ``:`` starts a comment; one space after a field's colon is removed; a blank line
dispatches the event if any ``data`` line was seen. Lines are split on bytes and UTF-8 is decoded
once per event, with replacement, so a character split across reads comes out whole.

Deliberate choices the spec leaves open or that differ from a browser's ``EventSource``:

- ``Event.id`` is the *last event ID* buffer, which persists across events as the spec says;
  ``Event.retry`` is the ``retry`` value given inside that event's own block, else ``None``
  (the spec applies it to the connection; we have no connection to apply it to).
- A line, or an event's accumulated data, longer than ``max_line_bytes`` raises
  :class:`LineTooLong` as soon as the buffered bytes pass the limit; events
  completed earlier in the same chunk are dropped with it, because the stream is dead anyway.
- ``flush()`` never dispatches (the spec discards an unterminated event) and leaves
  ``pending`` answering whether the stream was cut mid-line or mid-event.
- SSE cannot carry a CR inside data: :func:`encode_event` treats CR, LF and CRLF in ``data``
  alike as line breaks, so decoding gives the text back with LF line ends.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

__all__ = [
    "DONE",
    "Event",
    "LineTooLong",
    "SSEDecoder",
    "encode_comment",
    "encode_event",
    "encode_json",
    "text_of",
]

_BOM = b"\xef\xbb\xbf"
# Ints, also for lookups: ``_CR in data`` is a memchr, about 6x faster than ``b"\r" in data``
# (a one-byte needle still takes the substring search); the fast path runs once per event.
_LF = 0x0A
_CR = 0x0D
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Built once: json.dumps with non-default arguments would build an encoder on every call.
_JSON = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))

DONE: bytes = b"data: [DONE]\n\n"


class LineTooLong(Exception):
    """Raised when a line, or one event's data, passes the decoder's byte limit (the translator
    turns it into the HTTP-level :class:`~lib.errors.UpstreamLineTooLong`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an SSE line longer than {limit} bytes")
        self.limit = limit


class Event(NamedTuple):
    """One dispatched event (a named tuple: half the cost of a frozen dataclass to make, and the
    decoder makes one per upstream token)."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def text_of(data: bytes) -> str:
    """UTF-8 with invalid bytes replaced, as the spec says; strict decoding first, since the
    ``replace`` handler makes even valid input slower to decode."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


class SSEDecoder:
    """Incremental event-stream decoder: ``feed`` bytes as they arrive, ``flush`` at the end."""

    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self.max_line_bytes = max_line_bytes
        # Nothing buffered (no unfinished line or event): a read that is one whole event is
        # that event alone. Kept up to date by feed, so asking costs no call.
        self.idle = True
        self._parts: list[bytes] = []  # pieces of the unfinished line, joined once it ends
        self._parts_size = 0
        self._bom_checked = False
        self._after_cr = False  # the last chunk ended in CR: an LF opening the next is its pair
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._in_event = False  # a field line other than data was seen since the last blank line

    @property
    def pending(self) -> bool:
        """True while an unfinished line or event is buffered: a stream ending now was cut."""
        return bool(self._parts or self._data or self._in_event)

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished line and the current event's data (bounded by the cap)."""
        return self._parts_size + self._data_size

    def feed(self, chunk: bytes) -> list[Event]:
        """Take the next read; return the events it completed, in order."""
        try:
            return self._feed(chunk)
        finally:
            self.idle = not (self._parts or self._data or self._in_event or self._after_cr)

    def _feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._after_cr:
            self._after_cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if not self._bom_checked:
            if self._parts:  # only ever a one- or two-byte prefix of the BOM
                chunk = self._parts.pop() + chunk
                self._parts_size = 0
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._parts.append(chunk)
                self._parts_size = len(chunk)
                return []
            self._bom_checked = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
                if not chunk:
                    return []

        if self._parts:
            # A long line arriving in many reads: collect the pieces instead of re-copying them.
            self._parts.append(chunk)
            self._parts_size += len(chunk)
            if _LF not in chunk and _CR not in chunk:
                if self._parts_size > self.max_line_bytes:
                    self._overflow()
                return []
            buf = b"".join(self._parts)
            self._parts.clear()
            self._parts_size = 0
        else:
            buf = chunk

        if not (self._data or self._in_event) and buf.endswith(b"\n\n"):
            events = self._simple(buf)
            if events is not None:
                return events

        lines = buf.splitlines()  # on bytes this splits on CR, LF and CRLF only
        last = buf[-1]
        if last == _CR:
            self._after_cr = True
        elif last != _LF:
            rest = lines.pop()
            self._parts.append(rest)
            self._parts_size = len(rest)
        limit = self.max_line_bytes
        if len(buf) > limit and (
            self._parts_size > limit or any(len(line) > limit for line in lines)
        ):
            self._overflow()
        return self._process(lines) if lines else []

    def single(self, chunk: bytes) -> bool:
        """Whether ``chunk`` is exactly one whole event of one ``data: `` line (LF only) with
        nothing buffered before it: :meth:`feed` would return it as one event whose ``data`` is
        ``text_of(chunk[6:-2])``. The decoder is then left as ``feed`` would leave it; for
        anything else (False) call :meth:`feed`. At real pacing nearly every read is one such
        event, and the caller can take its bytes as they are."""
        if (
            not self.idle
            or not chunk.startswith(b"data: ")
            or chunk.find(b"\n") != len(chunk) - 2
            or not chunk.endswith(b"\n\n")
            or _CR in chunk
            or len(chunk) > self.max_line_bytes
        ):
            return False
        self._bom_checked = True  # it starts with "data: ", not with a BOM
        return True

    def _simple(self, buf: bytes) -> list[Event] | None:
        """The common case in one pass: whole events of one ``data: `` line each, LF only, and
        nothing buffered before them; None for anything else (the line-by-line path)."""
        if len(buf) > self.max_line_bytes or _CR in buf or not buf.startswith(b"data: "):
            return None
        if buf.find(b"\n") == len(buf) - 2:  # one event in this read: at real pacing, most
            return [Event(text_of(buf[6:-2]), None, self._id)]
        blocks = buf[:-2].split(b"\n\n")
        if buf.count(b"\n") != 2 * len(blocks):
            return None  # a multi-line event, or a blank line too many
        last_id = self._id
        events = []
        for block in blocks:
            if not block.startswith(b"data: "):
                return None
            events.append(Event(text_of(block[6:]), None, last_id))
        return events

    def flush(self) -> list[Event]:
        """End of stream. An unterminated event is never dispatched (WHATWG); see ``pending``."""
        return []

    def _process(self, lines: list[bytes]) -> list[Event]:
        events: list[Event] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    text = b"\n".join(data).decode("utf-8", "replace")
                    events.append(Event(text, self._event, self._id, self._retry))
                    data.clear()
                    self._data_size = 0
                self._event = None
                self._retry = None
                self._in_event = False
            elif line.startswith(b"data: "):  # the hot path: one JSON object per data line
                data.append(line[6:])
                self._data_size += len(line) - 5
                if self._data_size > self.max_line_bytes:
                    self._overflow()
            else:
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            return  # a comment
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_line_bytes:
                self._overflow()
            return
        self._in_event = True
        if name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:  # the spec ignores an id containing NUL
            self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():  # ASCII digits only; False for b""
            self._retry = int(value)
        # any other field name is ignored

    def _overflow(self) -> None:
        self._parts.clear()
        self._parts_size = 0
        self._data.clear()
        self._data_size = 0
        raise LineTooLong(self.max_line_bytes)


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Exact inverse of the decoder: one `data:` line per line of data, LF line ends, ending in a
    blank line. The space after each colon is always written, so a value may start with one;
    CR and CRLF in ``data`` become LF (SSE cannot carry them); a field that cannot be written on
    one line raises ValueError."""
    out: list[str] = []
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError("an SSE event type cannot contain a line break")
        out.append(f"event: {event}\n")
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise ValueError("an SSE id cannot contain a line break or NUL")
        out.append(f"id: {id}\n")
    lines = _LINE_BREAK.split(data) if "\r" in data else data.split("\n")
    out.append("data: " + "\ndata: ".join(lines) + "\n\n")
    return "".join(out).encode("utf-8")


def encode_json(obj: object) -> bytes:
    """b'data: ' + compact single-line JSON with every non-ASCII char escaped (ensure_ascii) +
    b'\n\n'. Escaping keeps naive readers that decode each read separately from corrupting
    characters; NaN and Infinity raise ValueError because JSON.parse rejects them."""
    return b"data: " + _JSON.encode(obj).encode("ascii") + b"\n\n"


def encode_comment(text: str = "") -> bytes:
    """A comment followed by a blank line: keeps a connection alive and dispatches nothing."""
    lines = _LINE_BREAK.split(text) if "\r" in text or "\n" in text else [text]
    return ("".join(f": {line}\n" for line in lines) + "\n").encode("utf-8")
