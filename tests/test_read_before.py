"""``UpstreamStream.read_before``: the relay's timed read with one timer per stream (issue 15)
keeps ``asyncio.timeout_at``'s contract, against a real aiohttp server on loopback whose chunks
the test releases one by one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lib.upstream import DRAIN_BYTES, UpstreamStream


class Feed:
    """A streaming endpoint that writes a chunk each time the test puts one in the queue."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while chunk := await self.chunks.get():
            await response.write(chunk)
        return response


@pytest.fixture
async def stream() -> AsyncIterator[tuple[UpstreamStream, Feed]]:
    feed = Feed()
    app = web.Application()
    app.router.add_get("/", feed.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        response = await session.get(server.make_url("/"))
        upstream = UpstreamStream(response)
        try:
            yield upstream, feed
        finally:
            feed.chunks.put_nowait(b"")
            upstream.close()
            await server.close()


async def test_a_read_past_its_deadline_raises_timeout(stream: tuple[UpstreamStream, Feed]) -> None:
    upstream, _ = stream
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await upstream.read_before(loop.time() + 0.01)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_deadline_moved_forward_does_not_expire_at_the_old_one(
    stream: tuple[UpstreamStream, Feed],
) -> None:
    upstream, feed = stream
    loop = asyncio.get_running_loop()
    feed.chunks.put_nowait(b"data: one\n\n")
    assert await upstream.read_before(loop.time() + 0.01) == b"data: one\n\n"
    # The timer armed for the first deadline is still set; the second read must outlive it.
    first_deadline = loop.time() + 0.01
    waiting = asyncio.create_task(upstream.read_before(loop.time() + 60))
    await asyncio.sleep(0.05)  # past the first deadline: the read is still waiting
    assert loop.time() > first_deadline
    assert not waiting.done()
    feed.chunks.put_nowait(b"data: two\n\n")
    assert await waiting == b"data: two\n\n"


async def test_an_earlier_deadline_rearms_the_timer(stream: tuple[UpstreamStream, Feed]) -> None:
    upstream, feed = stream
    loop = asyncio.get_running_loop()
    feed.chunks.put_nowait(b"data: one\n\n")
    assert await upstream.read_before(loop.time() + 60) == b"data: one\n\n"
    with pytest.raises(TimeoutError):
        await upstream.read_before(loop.time() + 0.01)


async def test_someone_elses_cancellation_is_not_a_timeout(
    stream: tuple[UpstreamStream, Feed],
) -> None:
    upstream, feed = stream
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(upstream.read_before(loop.time() + 60))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Unread bytes stay buffered: a later read gets them.
    feed.chunks.put_nowait(b"data: kept\n\n")
    assert await upstream.read_before(loop.time() + 60) == b"data: kept\n\n"


async def test_reads_are_capped_below_mallocs_mmap_threshold(
    stream: tuple[UpstreamStream, Feed],
) -> None:
    """asyncio reads a socket with recv(256 KiB), which glibc serves with mmap: an mmap, a page
    fault, an mremap and a munmap per small event. The stream caps its connection's reads at
    64 KiB (heap memory), and a chunk larger than that still arrives whole, over several reads."""
    from lib.upstream import UPSTREAM_READ_SIZE

    upstream, feed = stream
    transport = upstream._response.connection.transport  # type: ignore[union-attr]
    assert transport.max_size == UPSTREAM_READ_SIZE < 128 * 1024  # type: ignore[union-attr]
    big = b"data: " + b"x" * (3 * UPSTREAM_READ_SIZE) + b"\n\n"
    feed.chunks.put_nowait(big)
    loop = asyncio.get_running_loop()
    got = b""
    while len(got) < len(big):
        got += await upstream.read_before(loop.time() + 5)
    assert got == big


async def _read_done(upstream: UpstreamStream, feed: Feed) -> asyncio.BaseTransport:
    """``[DONE]`` sent and read, the body still open: its connection's transport, whose
    ``is_closing()`` then tells a dropped connection from a pooled one."""
    feed.chunks.put_nowait(b"data: [DONE]\n\n")
    assert await upstream.read_before(asyncio.get_running_loop().time() + 5) == b"data: [DONE]\n\n"
    connection = upstream._response.connection
    assert connection is not None
    transport = connection.transport
    assert transport is not None
    return transport


async def test_finish_waits_for_the_body_end_after_done_and_pools_the_connection(
    stream: tuple[UpstreamStream, Feed],
) -> None:
    upstream, feed = stream
    transport = await _read_done(upstream, feed)
    finishing = asyncio.create_task(upstream.finish())
    await asyncio.sleep(0)
    assert not finishing.done()  # the body has not ended yet: it waits
    feed.chunks.put_nowait(b"")  # the handler returns: the body's last chunk goes out
    await asyncio.wait_for(finishing, 5)
    assert not transport.is_closing()  # back in the pool, not dropped


async def test_finish_drops_a_connection_that_goes_on_past_the_bound_after_done(
    stream: tuple[UpstreamStream, Feed],
) -> None:
    """An upstream that keeps sending after [DONE] is read no further than the bound (about
    one read past it), not for the whole time bound."""
    upstream, feed = stream
    transport = await _read_done(upstream, feed)

    async def endless() -> None:  # a few chunks ahead of the server's writes, never more
        while True:
            if feed.chunks.qsize() < 4:
                feed.chunks.put_nowait(b": " + b"x" * 16_384 + b"\n\n")
            await asyncio.sleep(0)

    producer = asyncio.create_task(endless())
    try:
        await asyncio.wait_for(upstream.finish(), 5)
    finally:
        producer.cancel()
    assert transport.is_closing()
    # What reached the client's buffer: the bound, one read and the reader's buffer at most;
    # reading on for the whole time bound takes megabytes.
    assert upstream._response.content.total_bytes < DRAIN_BYTES + 512 * 1024


async def test_finish_with_no_time_left_drops_the_connection_without_waiting(
    stream: tuple[UpstreamStream, Feed],
) -> None:
    """Near the invocation's deadline the relay has no time to give: the body is not waited
    for at all (the call completes without suspending)."""
    upstream, feed = stream
    transport = await _read_done(upstream, feed)
    step = upstream.finish(0).__await__()
    with pytest.raises(StopIteration):
        next(step)  # done at the first step: nothing awaited
    assert transport.is_closing()
