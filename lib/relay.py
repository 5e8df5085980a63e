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
from lib.formats import Format
from lib.log import RequestLog
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
    try:
        await exchange.start(200, [*fmt.headers, *headers])
        opening = fmt.open()
        if opening:
            await exchange.write(opening)
        try:
            await _pump(
                stream, fmt, exchange, log, decoder, outcome, settings, cut_at, loop, started
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
        try:
            async with asyncio.timeout_at(wake):
                chunk = await stream.read()
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
        out, failure = _translate_events(decoder.feed(chunk), fmt, outcome, settings.openai_api_key)
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


def _translate_events(
    events: list[Event], fmt: Format, outcome: _Outcome, secret: str | None
) -> tuple[bytes, APIError | None]:
    """The output bytes for the events one upstream read completed, and the failure that ended
    them, if any (the events before it still go out, in order)."""
    parts: list[bytes] = []
    for event in events:
        data = event.data
        if not data:
            continue
        if data == "[DONE]":
            outcome.done = True
            break
        try:
            chunk = json.loads(data, parse_constant=_reject_constant)
        except ValueError:
            return b"".join(parts), UpstreamProtocolError(
                "The upstream sent an event that is not valid JSON."
            )
        if not isinstance(chunk, dict):
            return b"".join(parts), UpstreamProtocolError(
                "The upstream sent an event that is not a JSON object."
            )
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
        out = fmt.chunk(data, chunk)
        if out:
            parts.append(out)
            outcome.events += 1
    return b"".join(parts), None


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
    """The generated text in a chat (``delta.content``) or completion (``text``) choice."""
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity: no browser's JSON.parse accepts them


def _upstream_message(error: Any, secret: str | None) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return "The upstream failed mid-stream: " + redact(error["message"], secret)
    return "The upstream failed mid-stream."
