"""The one-event-per-read path (issue 15): at real pacing each upstream read is one whole event,
and the translator takes it without the decoder's event list (``SSEDecoder.single``). It must
write and say exactly what the general path does with the same events."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lib.aisdk import TextStream, UIMessageStream
from lib.formats import Format, OpenAIChat, OpenAICompletion, WholeResponse
from lib.sse import SSEDecoder
from lib.translate import Translator
from tests.test_fast_path import BEYOND_TEXT, STREAM

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


@pytest.mark.parametrize("stream", [STREAM, BEYOND_TEXT], ids=["text", "reasoning+tools"])
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
    data = single.single(chunk)
    events = fed.feed(chunk)
    assert [data] == [e.data for e in events]
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
    assert SSEDecoder().single(chunk) is None


def test_single_declines_while_something_is_buffered() -> None:
    """After an unfinished line, or a field of an event not yet dispatched, a complete-looking
    read belongs to what came before: only feed knows how."""
    for before in (b"data: {", b"id: 1\n", b"data: x\r", b"\xef\xbb"):
        decoder = SSEDecoder()
        decoder.feed(before)
        assert decoder.single(b'data: {"a":1}\n\n') is None, before


def test_single_respects_the_line_limit() -> None:
    chunk = b"data: " + b"x" * 100 + b"\n\n"
    assert SSEDecoder(max_line_bytes=50).single(chunk) is None
    assert SSEDecoder(max_line_bytes=200).single(chunk) == "x" * 100
