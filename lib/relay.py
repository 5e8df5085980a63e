"""The relay loop: upstream bytes -> SSE events -> the caller's format -> ASGI send.

Each upstream event is written the moment it is complete, whole, in one write (events that
arrived in the same read share it); nothing waits for a later event. While the upstream is
silent the relay sends the format's keep-alive. It stops at the first of: ``[DONE]``, the end of
the upstream body, an error, the idle limit, or the invocation deadline (minus its margin). A
failure after the headers went out is never a clean end: it becomes the format's in-band error
and the stream ends without ``[DONE]`` (or the connection breaks, for formats with no error
channel). The upstream response is always closed in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from lib.asgi import Exchange
from lib.config import Settings
from lib.errors import (
    APIError,
    DeadlineExceeded,
    RepetitiveOutput,
    StreamTooLong,
    UpstreamProtocolError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamTruncated,
    redact,
)
from lib.formats import Format, WholeResponse
from lib.log import RequestLog, warn
from lib.repetition import RepetitionDetector
from lib.sse import Event, SSEDecoder
from lib.upstream import UpstreamStream


class BreakConnection(Exception):
    """Raised to make the server drop the connection: the only honest end for a failed stream
    in a format without an in-band error channel (the plain text stream)."""


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


class _Outcome:
    """What the upstream's events said so far."""

    __slots__ = ("done", "events", "finish_reason", "loops", "usage")

    def __init__(self, loops: RepetitionDetector | None = None) -> None:
        self.loops = loops
        self.done = False
        self.events = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None


async def relay(
    stream: UpstreamStream,
    fmt: Format,
    exchange: Exchange,
    log: RequestLog,
    *,
    settings: Settings,
    headers: list[tuple[bytes, bytes]],
    cut_at: float | None,
    started: float,
) -> None:
    """Stream one accepted upstream response to the caller."""
    loop = asyncio.get_running_loop()
    decoder = SSEDecoder(settings.max_line_bytes)
    loops = None
    if settings.repetition_window:
        loops = RepetitionDetector(settings.repetition_window, settings.repetition_max_period)
    outcome = _Outcome(loops)
    template = _ContentTemplate()
    # Every write is bounded too: a caller that stops reading cannot hold the stream past the
    # write-stall timeout, the deadline or MAX_STREAM_SECONDS (lib/asgi.Exchange.bound_writes).
    longest = settings.max_stream_seconds
    until = None if longest is None else loop.time() + longest
    if cut_at is not None:
        until = cut_at if until is None else min(until, cut_at)
    exchange.bound_writes(settings.write_timeout, until)
    try:
        await exchange.start(200, [*fmt.headers, *headers])
        opening = fmt.open()
        if opening:
            await exchange.write(opening)
        try:
            await _pump(
                stream,
                fmt,
                exchange,
                log,
                decoder,
                outcome,
                template,
                settings,
                cut_at,
                loop,
                started,
            )
        except APIError as error:
            log.error_type = error.type
            trailer = fmt.fail(error)
            if trailer is None:
                raise BreakConnection from None
            await exchange.end(trailer)
            return
        await exchange.end(fmt.close())
    finally:
        log.events = outcome.events
        log.finish_reason = outcome.finish_reason
        log.usage = usage_counts(outcome.usage)
        if outcome.done:
            stream.release()
        else:
            stream.close()


async def relay_whole(
    stream: UpstreamStream,
    whole: WholeResponse,
    exchange: Exchange,
    log: RequestLog,
    *,
    settings: Settings,
    headers: list[tuple[bytes, bytes]],
    cut_at: float | None,
    started: float,
) -> None:
    """Gather one accepted upstream stream into one JSON answer, under the same limits and
    deadline as a stream; a failure on the way is raised (nothing has been sent yet)."""
    loop = asyncio.get_running_loop()
    decoder = SSEDecoder(settings.max_line_bytes)
    loops = None
    if settings.repetition_window:
        loops = RepetitionDetector(settings.repetition_window, settings.repetition_max_period)
    outcome = _Outcome(loops)
    try:
        await _pump(
            stream,
            whole,
            exchange,
            log,
            decoder,
            outcome,
            _ContentTemplate(),
            settings,
            cut_at,
            loop,
            started,
        )
        outcome.events = whole.chunks
        await exchange.respond(200, whole.close(), headers)
    finally:
        log.events = outcome.events or whole.chunks
        log.finish_reason = outcome.finish_reason
        log.usage = outcome.usage
        if outcome.done:
            stream.release()
        else:
            stream.close()


async def _pump(
    stream: UpstreamStream,
    fmt: Format,
    exchange: Exchange,
    log: RequestLog,
    decoder: SSEDecoder,
    outcome: _Outcome,
    template: _ContentTemplate,
    settings: Settings,
    cut_at: float | None,
    loop: asyncio.AbstractEventLoop,
    started: float,
) -> None:
    idle = settings.idle_timeout
    keepalive = settings.keepalive_interval
    last_data = last_write = loop.time()
    # MAX_STREAM_SECONDS: a limit of its own, from the first byte sent, whatever the deadline.
    longest = settings.max_stream_seconds
    too_long_at = None if longest is None else last_data + longest
    while True:
        now = loop.time()
        wake = min(last_data + idle, last_write + keepalive)
        if cut_at is not None:
            wake = min(wake, cut_at)
        if too_long_at is not None:
            wake = min(wake, too_long_at)
        # Bytes already buffered need no timer: a timeout per read costs more than relaying
        # a small event does. A read that has to wait gets the idle/keep-alive/deadline timer.
        chunk = stream.read_buffered() if now < wake else b""
        try:
            if not chunk:
                chunk = await stream.read_before(wake)
        except TimeoutError:
            now = loop.time()
            if cut_at is not None and now >= cut_at:
                raise DeadlineExceeded(
                    "The response was cut off at the function's time limit; it is incomplete."
                ) from None
            if too_long_at is not None and now >= too_long_at:
                raise StreamTooLong(
                    f"The response was cut off after {longest:g} s, the "
                    "longest a stream may last here; it is incomplete."
                ) from None
            if now >= last_data + idle:
                raise UpstreamTimeout(
                    f"The upstream sent nothing for {idle:g} s; the response is incomplete."
                ) from None
            ping = fmt.keepalive()
            if ping:
                await exchange.write(ping)
            last_write = loop.time()
            continue
        if not chunk:
            break
        last_data = loop.time()
        if log.first_upstream_byte_ms is None:
            log.first_upstream_byte_ms = round((last_data - started) * 1000, 2)
        try:
            out, failure = _translate_events(
                decoder.feed(chunk), fmt, outcome, settings.openai_api_key, template
            )
        except _MALFORMED as exc:
            # A shape the checks in _translate_events (_wrong_shape, the parser's recursion
            # limit) did not foresee: still the upstream's fault, still an in-band error, never
            # a traceback. The events of this read are not sent.
            warn("An upstream event had an unexpected shape.", error=type(exc).__name__)
            raise UpstreamProtocolError(
                "The upstream sent an event of a shape the protocol does not allow."
            ) from None
        if out:
            await exchange.write(out)
            last_write = loop.time()
            if log.first_event_ms is None:
                log.first_event_ms = round((last_write - started) * 1000, 2)
        if failure is not None:
            raise failure
        if outcome.done:
            return
    if not outcome.done and outcome.finish_reason is None:
        raise UpstreamTruncated("The upstream stream ended before the answer was complete.")
    outcome.done = True


_MALFORMED = (RecursionError, AttributeError, TypeError, KeyError, IndexError, ValueError)


def _wrong_shape(chunk: dict[str, Any]) -> str | None:
    """What is wrong with a parsed chunk's shape, in the fields the formats read (the chat and
    completion chunk schemas), or None. Only parsed chunks come here: the fast path's chunks
    have the shape of one that passed."""
    choices = chunk.get("choices")
    if choices is not None:
        if not isinstance(choices, list):
            return "whose choices is not a list"
        for choice in choices:
            if not isinstance(choice, dict):
                return "with a choice that is not an object"
            delta = choice.get("delta")
            if delta is not None and not isinstance(delta, dict):
                return "whose delta is not an object"
            text = choice.get("text") if delta is None else delta.get("content")
            if text is not None and not isinstance(text, str):
                return "whose text is not a string"
            reason = choice.get("finish_reason")
            if reason is not None and not isinstance(reason, str):
                return "whose finish_reason is not a string"
    usage = chunk.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "whose usage is not an object"
    return None


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


def _translate_events(
    events: list[Event],
    fmt: Format,
    outcome: _Outcome,
    secret: str | None,
    template: _ContentTemplate,
) -> tuple[bytes, APIError | None]:
    """The output bytes for the events one upstream read completed, and the failure that ended
    them, if any (the events before it still go out, in order)."""
    parts: list[bytes] = []
    delta = getattr(fmt, "delta", None)  # formats without the fast path parse every chunk
    other = getattr(fmt, "other_delta", None)  # the same for reasoning and tool arguments
    fast = delta is not None or other is not None
    for event in events:
        data = event.data
        if not data:
            continue
        if fast and template.like is not None:
            text = template.match(data)
            if text is not None:
                kind = template.kind
                if kind == "content":
                    out = None if delta is None else delta(data, text, template.like)
                else:
                    out = None if other is None else other(kind, data, text, template.like)
                if out is not None:
                    looping = None if kind == "arguments" else _looping(outcome, text)
                    if looping is not None:
                        return b"".join(parts), looping
                    if out:
                        parts.append(out)
                        outcome.events += 1
                    continue
        if data == "[DONE]":
            outcome.done = True
            break
        try:
            chunk = _DECODER.decode(data)
        except ValueError:
            return b"".join(parts), UpstreamProtocolError(
                "The upstream sent an event that is not valid JSON."
            )
        except RecursionError:  # the C parser's recursion limit: hostile nesting
            return b"".join(parts), UpstreamProtocolError(
                "The upstream sent an event nested too deeply to read."
            )
        if not isinstance(chunk, dict):
            return b"".join(parts), UpstreamProtocolError(
                "The upstream sent an event that is not a JSON object."
            )
        wrong = _wrong_shape(chunk)
        if wrong is not None:
            return b"".join(parts), UpstreamProtocolError(f"The upstream sent an event {wrong}.")
        if "error" in chunk:
            return b"".join(parts), UpstreamStreamError(_upstream_message(chunk["error"], secret))
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if isinstance(reason, str):
                outcome.finish_reason = reason
            looping = _looping(outcome, _text_of(choices[0]))
            if looping is not None:
                return b"".join(parts), looping
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            outcome.usage = usage
        if fast:
            template.learn(data, chunk)
        out = fmt.chunk(data, chunk)
        if out:
            parts.append(out)
            outcome.events += 1
    return b"".join(parts), None


class _ContentTemplate:
    """Recognises a stream's plain chunks by their bytes, so they skip ``json.loads``.

    Most chunks of a stream differ only in one string: same id, model and created, one choice,
    ``finish_reason`` null, no usage and no error, and a delta that holds only ``content``, or
    only reasoning (``reasoning_content`` / ``reasoning``), or only one tool call's next
    ``arguments`` fragment (``{"index": n, "function": {"arguments": ...}}``). After parsing
    such a chunk whose string has no quote, backslash or control character, the JSON before and
    after that string is kept, with its ``kind``. A later chunk that starts and ends with
    exactly that JSON, and whose middle again has no quote, backslash or control character, is
    the same document with another string: valid JSON, no finish reason, no usage, no error,
    so nothing the slow path would learn from it is lost. Anything else (other fields, escapes,
    a finish reason, usage, errors, ``[DONE]``, invalid JSON) takes the slow path, which also
    re-learns the template.
    """

    __slots__ = ("head", "kind", "like", "tail")

    def __init__(self) -> None:
        self.like: dict[str, Any] | None = None  # the parsed chunk the template came from
        self.kind = "content"  # content, reasoning_content, reasoning or arguments
        self.head = ""
        self.tail = ""

    def learn(self, data: str, chunk: dict[str, Any]) -> None:
        found = _plain_text(chunk)
        if found is None or _UNSAFE_TEXT.search(found[1]) is not None:
            return
        kind, text = found
        key = f'"{kind}":"'
        start = data.find(key + text + '"')
        if start < 0 or data.count(key) != 1:
            return  # spelled differently by the upstream, or ambiguous: no template
        cut = start + len(key)
        self.head, self.tail, self.like = data[:cut], data[cut + len(text) :], chunk
        self.kind = kind

    def match(self, data: str) -> str | None:
        """The chunk's string if it is a plain chunk of the template's shape, else None."""
        head, tail = self.head, self.tail
        if len(data) >= len(head) + len(tail) and data.startswith(head) and data.endswith(tail):
            text = data[len(head) : len(data) - len(tail)]
            if _UNSAFE_TEXT.search(text) is None:
                return text
        return None


# In a JSON string these three need escapes; their absence makes the text its own JSON form.
_UNSAFE_TEXT = re.compile(r'[\x00-\x1f"\\]')
_PLAIN_KEYS = frozenset({"id", "object", "created", "model", "system_fingerprint", "usage"})
_TEXT_KINDS = frozenset({"content", "reasoning_content", "reasoning"})


def _plain_text(chunk: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, string) of a chat chunk that carries nothing but one string in its delta (see
    :class:`_ContentTemplate`), else None."""
    choices = chunk.get("choices")
    if chunk.get("usage") is not None or not isinstance(choices, list) or len(choices) != 1:
        return None
    if any(key != "choices" and key not in _PLAIN_KEYS for key in chunk):
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or choice.keys() != {"index", "delta", "finish_reason"}:
        return None
    delta = choice["delta"]
    if choice["finish_reason"] is not None or not isinstance(delta, dict) or len(delta) != 1:
        return None
    ((kind, value),) = delta.items()
    if kind in _TEXT_KINDS:
        return (kind, value) if isinstance(value, str) else None
    if kind != "tool_calls" or not isinstance(value, list) or len(value) != 1:
        return None
    call = value[0]
    if not isinstance(call, dict) or call.keys() != {"index", "function"}:
        return None
    function = call["function"]
    if type(call["index"]) is not int or not isinstance(function, dict):
        return None
    if function.keys() != {"arguments"} or not isinstance(function["arguments"], str):
        return None
    return "arguments", function["arguments"]


def _looping(outcome: _Outcome, text: str) -> APIError | None:
    """The error that cuts a looping model off, once ``text`` completes the loop; call it with
    every content delta (any fast path that skips parsing included)."""
    if outcome.loops is None:
        return None
    period = outcome.loops.feed(text)
    if period is None:
        return None
    return RepetitiveOutput(
        f"The model kept repeating the same {period}-character passage; the response was cut "
        "off and is incomplete."
    )


def _text_of(choice: dict[str, Any]) -> str:
    """The generated text in a chat (``delta.content``) or completion (``text``) choice, and a
    chat delta's reasoning: a model can loop while it thinks too (tool arguments are left out:
    a long list of like items is legitimately periodic)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    text = delta.get("content")
    thought = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(thought, str) and thought:
        return thought + text if isinstance(text, str) else thought
    return text if isinstance(text, str) else ""


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity: no browser's JSON.parse accepts them


# Built once: json.loads with a keyword argument builds a new decoder on every call (3 us).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _upstream_message(error: Any, secret: str | None) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return "The upstream failed mid-stream: " + redact(error["message"], secret)
    return "The upstream failed mid-stream."
