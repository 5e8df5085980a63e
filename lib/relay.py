"""The pump: reads the upstream, feeds the translator, writes to the caller; owns I/O and time.

What the bytes mean is the translator's (``lib/translate.py``); when each limit expires is the
clock's (``lib/clock.py``).

Each upstream event is written the moment it is complete, whole, in one write (events that
arrived in the same read share it); nothing waits for a later event. While the upstream is
silent the relay sends the format's keep-alive. It stops at the first of: ``[DONE]``, the end of
the upstream body, an error, or a limit of the clock (idle, maximum stream time, the invocation
deadline minus its margin). A
failure after the headers went out is never a clean end: it becomes the format's in-band error
and the stream ends without ``[DONE]`` (or the connection breaks, for formats with no error
channel). The upstream response is always closed in ``finally``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from lib.asgi import Exchange, Header
from lib.clock import StreamClock
from lib.config import StreamLimits, UpstreamSettings
from lib.errors import APIError, BreakConnection
from lib.formats import Format, WholeResponse
from lib.log import RequestLog
from lib.translate import Translator
from lib.upstream import UpstreamStream


def translator_for(fmt: Format, upstream: UpstreamSettings, limits: StreamLimits) -> Translator:
    """The stream's translator, with the upstream's line limit and key (never echoed) and the
    deployment's loop detector."""
    repetition = None
    if limits.repetition_window:
        repetition = (limits.repetition_window, limits.repetition_max_period)
    return Translator(
        fmt,
        max_line_bytes=upstream.max_line_bytes,
        secret=upstream.api_key,
        repetition=repetition,
    )


def clock_for(
    limits: StreamLimits, *, idle: float, started: float, cut_at: float | None
) -> StreamClock:
    """The stream's clock, with the deployment's stream limits and the upstream's idle limit."""
    return StreamClock(
        started=started,
        cut_at=cut_at,
        idle=idle,
        keepalive=limits.keepalive_interval,
        longest=limits.max_stream_seconds,
        write_stall=limits.write_timeout,
    )


async def relay(
    stream: UpstreamStream,
    translator: Translator,
    exchange: Exchange,
    log: RequestLog,
    clock: StreamClock,
    headers: list[Header],
) -> None:
    """Stream one accepted upstream response to the caller."""
    loop = asyncio.get_running_loop()
    said = translator.said
    clock.begin(loop.time())
    # Every write is bounded too: a caller that stops reading cannot hold the stream past the
    # write-stall timeout, the deadline or MAX_STREAM_SECONDS.
    exchange.bound_writes(clock)
    try:
        await exchange.start(200, [*translator.format.headers, *headers])
        opening = translator.open()
        if opening:
            await exchange.write(opening)
        clock.wrote(loop.time())
        try:
            await _pump(stream, translator, exchange, log, clock)
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
    translator: Translator,
    whole: WholeResponse,
    exchange: Exchange,
    log: RequestLog,
    clock: StreamClock,
    headers: list[Header],
) -> None:
    """Gather one accepted upstream stream into one JSON answer (``whole``, the translator's
    format), under the same limits and deadline as a stream; a failure on the way is raised
    (nothing has been sent yet)."""
    said = translator.said
    clock.begin(asyncio.get_running_loop().time())
    try:
        await _pump(stream, translator, exchange, log, clock)
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
    clock: StreamClock,
) -> None:
    """Read, feed the translator, write, until the stream ends or a limit expires."""
    time = asyncio.get_running_loop().time
    said = translator.said
    while not said.done:
        wake = clock.wake()
        # Bytes already buffered need no timer: a timeout per read costs more than relaying
        # a small event does. A read that has to wait gets the clock's next wake-up.
        chunk = stream.read_buffered() if time() < wake else b""
        try:
            if not chunk:
                chunk = await stream.read_before(wake)
        except TimeoutError:
            expired = clock.expired(time())
            if expired is not None:
                raise expired from None
            ping = translator.keepalive()
            if ping:
                await exchange.write(ping)
            clock.wrote(time())
            continue
        if not chunk:
            translator.end()
            return
        clock.data(time())
        if log.first_upstream_byte_ms is None:
            log.first_upstream_byte_ms = clock.ms(clock.last_data)
        out, failure = translator.feed(chunk)
        if out:
            await exchange.write(out)
            clock.wrote(time())
            if log.first_event_ms is None:
                log.first_event_ms = clock.ms(clock.last_write)
        if failure is not None:
            raise failure


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
