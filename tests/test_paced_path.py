"""The one-event-per-read path (issue 15): at real pacing each upstream read is one whole event,
and the translator takes it without the decoder's event list (``SSEDecoder.single``). It must
write and say exactly what the general path does with the same events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lib.aisdk import TextStream, UIMessageStream
from lib.asgi import Exchange
from lib.clock import StreamClock
from lib.errors import APIError, UpstreamLineTooLong, UpstreamProtocolError
from lib.formats import Format, OpenAIChat, OpenAICompletion, WholeResponse
from lib.relay import HOLD_BYTES, SLICE_BYTES, relay
from lib.sse import SSEDecoder, text_of
from lib.translate import Translator
from lib.upstream import UpstreamStream
from tests.test_fast_path import BEYOND_TEXT, REAL_STREAM, STREAM

MAKERS: list[Callable[[], Format]] = [
    lambda: OpenAIChat(include_usage=True),
    lambda: OpenAICompletion(include_usage=False),
    UIMessageStream,
    TextStream,
    lambda: WholeResponse(shape="chat"),
]


def frame(data: str) -> bytes:
    return b"data: " + data.encode() + b"\n\n"


def outcome(translator: Translator) -> tuple[object, ...]:
    said = translator.said
    return said.done, said.events, said.finish_reason, said.usage


@pytest.mark.parametrize(
    "stream", [STREAM, BEYOND_TEXT, REAL_STREAM], ids=["text", "reasoning+tools", "as-openai-sends"]
)
@pytest.mark.parametrize("make", MAKERS)
def test_one_event_reads_match_one_big_read(stream: list[str], make: Callable[[], Format]) -> None:
    """Every event in its own read (the single-event path) against all of them in one read (the
    decoder's list): the same bytes in the same order, the same failure, the same outcome."""
    paced, batched = Translator(make(), secret="sk-x"), Translator(make(), secret="sk-x")
    written, failure = b"", None
    for data in stream:
        out, failure = paced.feed(frame(data))
        written += out
        if failure is not None or paced.said.done:
            break
    whole, whole_failure = batched.feed(b"".join(frame(d) for d in stream))
    assert written == whole
    assert (type(failure), getattr(failure, "message", None)) == (
        type(whole_failure),
        getattr(whole_failure, "message", None),
    )
    assert outcome(paced) == outcome(batched)


def backlog(frames: list[bytes], group: int, split_last: bool) -> list[bytes]:
    """The first event in a read of its own (the stream learns its template), then the rest
    ``group`` events to a read, as a backlog arrives; with ``split_last`` each such read ends
    halfway through its last event, and the next read is the rest of that event."""
    reads = frames[:1]
    for i in range(1, len(frames), group):
        batch = frames[i : i + group]
        if split_last and len(batch) == group:
            cut = len(batch[-1]) // 2
            reads += [b"".join(batch[:-1]) + batch[-1][:cut], batch[-1][cut:]]
        else:
            reads.append(b"".join(batch))
    return reads


def written_by(translator: Translator, reads: list[bytes]) -> tuple[bytes, object]:
    """What the relay writes for these reads: every read's bytes until the first failure or
    ``[DONE]``, and that failure (type and message)."""
    written = b""
    for read in reads:
        out, failure = translator.feed(read)
        written += out
        if failure is not None:
            return written, (type(failure), failure.message)
        if translator.said.done:
            break
    return written, None


@pytest.mark.parametrize(
    "stream", [STREAM, BEYOND_TEXT, REAL_STREAM], ids=["text", "reasoning+tools", "as-openai-sends"]
)
@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize(("group", "split_last"), [(2, False), (5, False), (3, True), (6, True)])
def test_a_backlog_after_the_template_matches_one_event_reads(
    stream: list[str], make: Callable[[], Format], group: int, split_last: bool
) -> None:
    """Once a template is learned, a read of several events is matched in place, event by
    event, and what follows the last plain chunk goes through the decoder: the same bytes, the
    same failure and the same outcome as one event per read, from every starting point."""
    for start in range(len(stream)):
        frames = [frame(d) for d in stream[start:] + stream[:start]]
        paced, batched = Translator(make(), secret="sk-x"), Translator(make(), secret="sk-x")
        assert written_by(batched, backlog(frames, group, split_last)) == written_by(
            paced, frames
        ), start
        assert outcome(batched) == outcome(paced), start


def test_a_backlog_of_plain_chat_chunks_is_relayed_as_the_read_that_came() -> None:
    """Several canonical plain chunks in one read: the chat format writes that read itself, and
    every event is counted and reaches the loop detector."""
    translator = Translator(OpenAIChat(include_usage=False), repetition=(40, 4))
    translator.feed(frame(REAL_STREAM[0]))
    read = b"".join(frame(REAL_STREAM[i]) for i in (1, 3, 10))
    out, failure = translator.feed(read)
    assert failure is None
    assert out is read
    assert translator.said.events == 4
    loop = frame(REAL_STREAM[1].replace(" world", "ab"))
    out, failure = translator.feed(loop * 60)
    assert isinstance(failure, APIError)
    assert failure.type == "repetitive_output"
    # The events before the one that completed the loop are written, as single reads would be.
    single = Translator(OpenAIChat(include_usage=False), repetition=(40, 4))
    single.feed(frame(REAL_STREAM[0]))
    single.feed(read)
    assert (out, (type(failure), failure.message)) == written_by(single, [loop] * 60)


@pytest.mark.parametrize(
    "chunk",
    [
        b'data: {"a":1}\n\n',
        b"data: \n\n",
        "data: sch\u00f6n\n\n".encode(),
        b"data: \xff broken utf-8\n\n",
    ],
)
def test_single_is_what_feed_returns(chunk: bytes) -> None:
    single, fed = SSEDecoder(), SSEDecoder()
    assert single.single(chunk)
    events = fed.feed(chunk)
    assert [text_of(chunk[6:-2])] == [e.data for e in events]
    # The decoder is left as feed leaves it: the next read decodes the same.
    follow = b'data: {"b":2}\n\nid: 7\ndata: x\n'
    assert single.feed(follow) == fed.feed(follow)
    assert single.pending == fed.pending


@pytest.mark.parametrize(
    "chunk",
    [
        b'data: {"a":1}\n\ndata: {"b":2}\n\n',  # two events: the decoder's list
        b'data: {"a":1}\r\n\r\n',  # CR line ends
        b'data: {"a":1}\n',  # not complete
        b"event: x\ndata: 1\n\n",  # another field
        b"data:1\n\n",  # no space after the colon
        b'\xef\xbb\xbfdata: {"a":1}\n\n',  # a BOM first
        b": comment\n\n",
    ],
)
def test_single_leaves_anything_else_to_feed(chunk: bytes) -> None:
    assert not SSEDecoder().single(chunk)


def test_single_declines_while_something_is_buffered() -> None:
    """After an unfinished line, or a field of an event not yet dispatched, a complete-looking
    read belongs to what came before: only feed knows how."""
    for before in (b"data: {", b"id: 1\n", b"data: x\r", b"\xef\xbb"):
        decoder = SSEDecoder()
        decoder.feed(before)
        assert not decoder.single(b'data: {"a":1}\n\n'), before


def test_single_respects_the_line_limit() -> None:
    chunk = b"data: " + b"x" * 100 + b"\n\n"
    assert not SSEDecoder(max_line_bytes=50).single(chunk)
    assert SSEDecoder(max_line_bytes=200).single(chunk)


def test_idle_says_whether_anything_is_buffered() -> None:
    decoder = SSEDecoder()
    assert decoder.idle
    for read, idle in [
        (b"data: {", False),  # an unfinished line
        (b'"a":1}\n', False),  # a data line of an event not yet dispatched
        (b"\n", True),
        (b"id: 1\n", False),  # a field of an event not yet dispatched
        (b"\n", True),
        (b"data: x\r", False),  # a CR whose LF may come next
        (b"\n\n", True),
    ]:
        decoder.feed(read)
        assert decoder.idle is idle, read


def test_a_read_that_matches_the_template_still_belongs_to_the_event_before_it() -> None:
    """With part of an event buffered, a read that looks like a plain chunk is the rest of that
    event, and only the decoder knows what it means: the fast path must not take it."""
    plain = ("data: " + REAL_STREAM[1] + "\n\n").encode()
    fast, slow = (
        Translator(OpenAIChat(include_usage=False)),
        Translator(OpenAIChat(include_usage=False)),
    )
    for translator in (fast, slow):
        translator.feed(("data: " + REAL_STREAM[0] + "\n\n").encode())
        translator.feed(b"data: {")  # the start of an event: cut off mid-line
    slow.template = type(slow.template)()  # never learned: the decoder's reading
    assert fast.template.match(plain) is not None
    (fast_out, fast_failure), (slow_out, slow_failure) = fast.feed(plain), slow.feed(plain)
    assert fast_out == slow_out == b""
    assert isinstance(fast_failure, UpstreamProtocolError)  # "data: {" + a whole event
    assert isinstance(slow_failure, UpstreamProtocolError)
    assert fast_failure.message == slow_failure.message


def test_a_read_that_matches_the_template_respects_the_line_limit() -> None:
    plain = ("data: " + REAL_STREAM[1] + "\n\n").encode()
    translator = Translator(OpenAIChat(include_usage=False), max_line_bytes=len(plain) - 3)
    first = ("data: " + REAL_STREAM[0] + "\n\n").encode()
    assert translator.feed(first)[1] is None
    assert translator.template.match(plain) is not None
    out, failure = translator.feed(plain)
    assert out == b""
    assert isinstance(failure, UpstreamLineTooLong)


CHAT = (
    '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{"index":0,"delta":{"content":"tok%d"},"finish_reason":null}]}'
)


async def relay_burst(
    aiohttp_server: Callable[..., Awaitable[TestServer]], burst: bytes
) -> list[tuple[int, bytes]]:
    """Relay ``burst``, already whole in the client's buffer, as a chat stream while a ticker
    counts the steps of the event loop: each body write, with the count when it was made."""

    async def upstream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(burst)
        return response

    app = web.Application()
    app.router.add_get("/", upstream)
    server = await aiohttp_server(app)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    writes: list[tuple[int, bytes]] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            writes.append((ticks, message["body"]))  # type: ignore[arg-type]

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()  # the caller never goes away
        return {}

    async with aiohttp.ClientSession() as session:
        response = await session.get(server.make_url("/"))
        # The whole burst is in the client's buffer first (aiohttp has no event for that).
        while response.content.total_bytes < len(burst):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        stream = UpstreamStream(response)
        loop = asyncio.get_running_loop()
        clock = StreamClock(
            started=loop.time(), cut_at=None, idle=30, keepalive=15, longest=None, write_stall=30
        )
        translator = Translator(OpenAIChat(include_usage=False))
        exchange = Exchange({"type": "http", "headers": []}, receive, send)  # type: ignore[arg-type]
        running = asyncio.create_task(ticker())
        try:
            async with exchange:
                await relay(stream, translator, exchange, clock, ())
        finally:
            running.cancel()
    return [(seen, data) for seen, data in writes if data]


def chat_burst(events: int) -> bytes:
    return b"".join(b"data: " + (CHAT % i).encode() + b"\n\n" for i in range(events))


async def test_a_backlog_is_relayed_in_slices_with_the_loop_let_through(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """A read much bigger than one event (an upstream faster than its caller, a busy instance)
    is translated a slice at a time, and other tasks (other streams, a new request) run
    between the slices instead of waiting for all of it; the output is written a few slices
    at a time, not a write per slice (each write wakes the caller's socket); the caller still
    gets every byte, in order."""
    events = chat_burst(700)
    burst = events + b"data: [DONE]\n\n"
    assert 64 * 1024 < len(burst) < 128 * 1024  # several slices; within aiohttp's read buffer
    writes = await relay_burst(aiohttp_server, burst)
    body = [(seen, data) for seen, data in writes if data != b"data: [DONE]\n\n"]
    assert b"".join(data for _, data in body) == events
    slices = len(burst) // SLICE_BYTES
    # A step of the loop per slice, but the last of each read (at most two reads of 64 KiB).
    assert body[-1][0] - body[0][0] >= slices - 2 - HOLD_BYTES // SLICE_BYTES
    assert 4 <= len(body) <= len(burst) // HOLD_BYTES + 2  # held: not a write per slice
    assert all(len(data) < HOLD_BYTES + SLICE_BYTES for _, data in body)


async def test_a_read_of_a_few_events_is_relayed_in_one_step(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """A read up to HOLD_BYTES (a saturated instance finds a few events per read) is not
    sliced: one write, with no step of the loop let through before it."""
    events = chat_burst(60)
    assert SLICE_BYTES < len(events) < HOLD_BYTES
    writes = await relay_burst(aiohttp_server, events + b"data: [DONE]\n\n")
    assert [data for _, data in writes] == [events, b"data: [DONE]\n\n"]
    assert writes[0][0] == 0  # the ticker never ran: the relay did not yield


async def test_a_failure_inside_a_backlog_comes_after_what_was_held(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """An upstream error in the middle of a big read: the events before it that were
    translated but held for a later write still reach the caller, before the error."""
    events = chat_burst(300)
    error = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
    burst = events + error + chat_burst(300)
    writes = await relay_burst(aiohttp_server, burst)
    relayed = b"".join(data for _, data in writes)
    assert relayed.startswith(events)
    trailer = relayed.removeprefix(events)
    assert b"overloaded" in trailer
    assert b"tok0" not in trailer  # nothing after the error
    assert b"[DONE]" not in trailer


def test_a_backlog_cut_where_slice_end_says_is_relayed_in_place() -> None:
    """Slices of a big read end where events do, so that each one after the first is whole
    events the chat format relays as they came (the bytes themselves, no step through the
    decoder); cut at fixed offsets, every slice after the first starts inside an event."""
    read = chat_burst(400)
    translator = Translator(OpenAIChat(include_usage=False))
    start, in_place, relayed = 0, 0, []
    while start < len(read):
        end = translator.slice_end(read, start, SLICE_BYTES)
        assert end - start <= SLICE_BYTES
        assert read[:end].endswith(b"\n\n")
        piece = read[start:end]
        out, failure = translator.feed(piece)
        assert failure is None
        in_place += out is piece
        relayed.append(out)
        start = end
    assert b"".join(relayed) == read
    # All but the first: its first event is parsed, and the template learned from it.
    assert in_place == len(relayed) - 1 >= len(read) // SLICE_BYTES

    fixed = Translator(OpenAIChat(include_usage=False))
    pieces = [read[i : i + SLICE_BYTES] for i in range(0, len(read), SLICE_BYTES)]
    assert not any(fixed.feed(piece)[0] is piece for piece in pieces[1:])


def test_slice_end_inside_an_event_and_past_a_long_one() -> None:
    """Mid-event (the decoder holds the start of one) a slice ends with that event, so that
    only its rest goes through the decoder; an event longer than a slice is cut at the
    slice's size."""
    events = chat_burst(40)
    translator = Translator(OpenAIChat(include_usage=False))
    translator.feed(events[:10])  # the start of the first event
    rest = events[10:]
    assert translator.slice_end(rest, 0, SLICE_BYTES) == rest.index(b"\n\n") + 2
    long = b"data: " + b"x" * (3 * SLICE_BYTES) + b"\n\n"
    assert Translator(OpenAIChat(include_usage=False)).slice_end(long, 0, SLICE_BYTES) == (
        SLICE_BYTES
    )
