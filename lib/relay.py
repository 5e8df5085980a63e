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
import logging
import re
from typing import Any

from lib.asgi import Exchange
from lib.config import Settings
from lib.errors import APIError, DeadlineExceeded, StreamTooLong, UpstreamTimeout
from lib.formats import Format, WholeResponse
from lib.log import RequestLog
from lib.translate import Translator
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


def translator_for(fmt: Format, settings: Settings) -> Translator:
    """The stream's translator, with the deployment's line limit, key and loop detector."""
    repetition = None
    if settings.repetition_window:
        repetition = (settings.repetition_window, settings.repetition_max_period)
    return Translator(
        fmt,
        max_line_bytes=settings.max_line_bytes,
        secret=settings.openai_api_key,
        repetition=repetition,
    )


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
    translator = translator_for(fmt, settings)
    said = translator.said
    # Every write is bounded too: a caller that stops reading cannot hold the stream past the
    # write-stall timeout, the deadline or MAX_STREAM_SECONDS (lib/asgi.Exchange.bound_writes).
    longest = settings.max_stream_seconds
    until = None if longest is None else loop.time() + longest
    if cut_at is not None:
        until = cut_at if until is None else min(until, cut_at)
    exchange.bound_writes(settings.write_timeout, until)
    try:
        await exchange.start(200, [*fmt.headers, *headers])
        opening = translator.open()
        if opening:
            await exchange.write(opening)
        try:
            await _pump(stream, translator, exchange, log, settings, cut_at, loop, started)
        except APIError as error:
            log.error_type = error.type
            trailer = translator.fail(error)
            if trailer is None:
                raise BreakConnection from None
            await exchange.end(trailer)
            return
        await exchange.end(translator.close())
    finally:
        log.events = said.events
        log.finish_reason = said.finish_reason
        log.usage = usage_counts(said.usage)
        if said.done:
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
    translator = translator_for(whole, settings)
    said = translator.said
    try:
        await _pump(stream, translator, exchange, log, settings, cut_at, loop, started)
        said.events = whole.chunks
        await exchange.respond(200, whole.close(), headers)
    finally:
        log.events = said.events or whole.chunks
        log.finish_reason = said.finish_reason
        log.usage = said.usage
        if said.done:
            stream.release()
        else:
            stream.close()


async def _pump(
    stream: UpstreamStream,
    translator: Translator,
    exchange: Exchange,
    log: RequestLog,
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
    said = translator.said
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
            ping = translator.keepalive()
            if ping:
                await exchange.write(ping)
            last_write = loop.time()
            continue
        if not chunk:
            break
        last_data = loop.time()
        if log.first_upstream_byte_ms is None:
            log.first_upstream_byte_ms = round((last_data - started) * 1000, 2)
        out, failure = translator.feed(chunk)
        if out:
            await exchange.write(out)
            last_write = loop.time()
            if log.first_event_ms is None:
                log.first_event_ms = round((last_write - started) * 1000, 2)
        if failure is not None:
            raise failure
        if said.done:
            return
    translator.end()


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
