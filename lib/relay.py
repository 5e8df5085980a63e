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
channel). After a clean end, once the caller has its whole answer, the upstream's body is read
to its end (bounded: ``UpstreamStream.finish``) so that its connection is pooled for the next
request; on any other way out it is released or dropped in ``finally``.
"""

from __future__ import annotations

import asyncio

from lib.asgi import Exchange, Header, loop_clock
from lib.clock import StreamClock
from lib.config import StreamLimits, UpstreamSettings
from lib.errors import APIError, BreakConnection
from lib.formats import Format, WholeResponse
from lib.translate import Translator
from lib.upstream import DRAIN_SECONDS, UpstreamStream

# A read bigger than HOLD_BYTES (a backlog: the upstream is faster than the caller, or the
# instance is busy) is translated at most SLICE_BYTES per step of the event loop, about 14
# events of a chat stream, each slice ending where an event does (Translator.slice_end), and
# written once HOLD_BYTES of output are ready or the read is done; a smaller read (at real
# pacing, one event; a few on a saturated instance) is relayed in one step, in one write.
# With 8 unpaced streams, a new request's first byte took 3.2 ms against the pass-through's
# 3.1 (16 KiB slices, each written: 14.1 ms), for 0.69x the CPU per unpaced event; a write per
# 4 KiB slice cost 60% more CPU (each write wakes the caller's socket), and copying the rest of
# the read at every slice as much again (docs/performance.md, eleventh pass).
SLICE_BYTES = 4 * 1024
HOLD_BYTES = 16 * 1024


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
    clock: StreamClock,
    headers: tuple[Header, ...],
    whole: WholeResponse | None = None,
) -> None:
    """Stream one accepted upstream response to the caller; or, with ``whole`` (the
    translator's format), gather it into one JSON answer, under the same limits and deadline,
    a failure on the way raised (nothing has been sent yet). What it said and when is left on
    ``translator.said`` and the clock, for the handler's log line.

    One coroutine for the whole stream (a frame per open stream, and a level every event
    resumes through). At real pacing every event is its own read, so the loop's fixed costs
    are paid per event: the clock is read once after a read and once after a write (each
    reading serves the next step too), and a read that finds bytes already buffered returns
    them without waiting (its timer is the stream's one, already armed). A read bigger than
    HOLD_BYTES (a backlog) is relayed in slices with the event loop let through in between,
    so that one fast stream cannot hold up every other stream and a new request's first byte
    for the whole of it; the slices' output is written a few at a time."""
    time = loop_clock(asyncio.get_running_loop())
    said = translator.said
    finished = False  # the upstream connection went back to the pool (or was dropped) in order
    clock.begin(time())
    try:
        if whole is None:
            # Every write is bounded too: a caller that stops reading cannot hold the stream
            # past the write-stall timeout, the deadline or MAX_STREAM_SECONDS.
            # The clock is told when each write begins and ends (writing_since), which the
            # watchdog reads: the write itself is the server's own awaitable, no frame of ours.
            exchange.bound_writes(clock)
            clock.writing_since = time()
            await exchange.start(200, [*translator.format.headers, *headers])
            opening = translator.open()
            if opening:
                await exchange.write(opening)
            clock.writing_since = None
            clock.wrote(time())
        # No bound methods kept in locals: each is an object per open stream, for a lookup that
        # costs next to nothing per event.
        big = b""  # a read too big for one step (HOLD_BYTES), relayed a slice at a time
        pos = 0  # where its next slice starts (0: there is no such read)
        held: list[bytes] = []  # what its earlier slices translated to, not written yet
        held_bytes = 0
        try:
            while not said.done:
                if pos:
                    await asyncio.sleep(0)  # the other tasks run first
                    end = translator.slice_end(big, pos, SLICE_BYTES)
                    chunk = big[pos:end]
                    pos = end
                    if pos >= len(big):
                        big, pos = b"", 0
                    now = time()
                else:
                    try:
                        chunk = await stream.read_before(clock.wake())
                    except TimeoutError:
                        now = time()
                        expired = clock.expired(now)
                        if expired is not None:
                            raise expired from None
                        ping = translator.keepalive()
                        if ping:
                            clock.writing_since = now
                            await exchange.write(ping)
                            now = time()
                            clock.writing_since = None
                        clock.last_write = now
                        continue
                    if not chunk:
                        translator.end()
                        break
                    now = clock.last_data = time()
                    if clock.first_data is None:
                        clock.first_data = now
                    if len(chunk) > HOLD_BYTES:
                        big, pos = chunk, translator.slice_end(chunk, 0, SLICE_BYTES)
                        chunk = big[:pos]
                out, failure = translator.feed(chunk)
                if pos or held:  # a big read: written once HOLD_BYTES are ready, or at its end
                    if out:
                        held.append(out)
                        held_bytes += len(out)
                    if pos and failure is None and not said.done and held_bytes < HOLD_BYTES:
                        out = b""
                    else:
                        out = b"".join(held)
                        held.clear()
                        held_bytes = 0
                if out:
                    clock.writing_since = now
                    await exchange.write(out)
                    now = clock.last_write = time()
                    clock.writing_since = None
                    if clock.first_write is None:
                        clock.first_write = now
                if failure is not None:
                    raise failure
                # Not held while the next read waits: up to two reads' bytes per open stream.
                del chunk, out
        except APIError as error:
            if whole is not None:
                raise
            trailer = translator.fail(error)
            if trailer is None:
                raise BreakConnection from None
            clock.writing_since = time()
            await exchange.end(trailer)
            return
        if whole is None:
            clock.writing_since = time()
            await exchange.end(translator.close())
            clock.writing_since = None
        else:
            await exchange.respond(200, whole.close(), headers)
        # The caller has its whole answer; the upstream's body may end a moment after [DONE]
        # (read within the invocation's deadline, minus its margin).
        within = DRAIN_SECONDS
        if clock.cut_at is not None:
            within = max(0.0, min(within, clock.cut_at - time()))
        await stream.finish(within)
        finished = True
    finally:
        if whole is not None:
            said.events = whole.chunks  # upstream chunks gathered: the answer is one object
        if not finished:
            if said.done:
                stream.release()
            else:
                stream.close()
