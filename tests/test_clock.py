"""The stream clock answers "what expires next" from the times it is given: no sleeping; and
the relay reads the loop's own clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from lib.asgi import loop_clock
from lib.clock import StreamClock
from lib.errors import DeadlineExceeded, StreamTooLong, UpstreamTimeout


def clock(*, cut_at: float | None = None, longest: float | None = None) -> StreamClock:
    c = StreamClock(
        started=100.0, cut_at=cut_at, idle=30.0, keepalive=5.0, longest=longest, write_stall=8.0
    )
    c.begin(101.0)
    return c


def test_keepalive_is_next_while_the_upstream_is_silent() -> None:
    c = clock()
    assert c.wake() == 106.0
    assert c.expired(106.0) is None  # a keep-alive is due, nothing has expired
    c.wrote(106.0)
    assert c.wake() == 111.0


def test_idle_expires_from_the_last_upstream_byte_not_the_last_write() -> None:
    c = clock()
    c.data(110.0)
    c.wrote(138.0)
    assert c.wake() == 140.0
    assert c.expired(139.9) is None
    assert isinstance(c.expired(140.0), UpstreamTimeout)


def test_deadline_cut_comes_first_and_is_the_most_final() -> None:
    c = clock(cut_at=103.0, longest=1.0)
    assert c.wake() == 102.0  # the stream's own limit falls first
    assert isinstance(c.expired(102.0), StreamTooLong)
    assert isinstance(c.expired(103.0), DeadlineExceeded)  # both expired: the deadline wins


def test_max_stream_time_counts_from_begin() -> None:
    c = clock(longest=10.0)
    assert c.ends_at() == 111.0
    assert c.expired(110.9) is None
    error = c.expired(111.0)
    assert isinstance(error, StreamTooLong)
    assert "10 s" in error.message


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        (None, 101.0, 103.0),  # nothing writing: look again in a quarter of the stall timeout
        (101.0, 102.0, 104.0),
        (101.0, 108.5, 109.0),  # the stall falls before the next quarter
        (101.0, 109.0, None),  # waited the whole stall timeout: stalled
    ],
)
def test_write_watchdog(since: float | None, now: float, expected: float | None) -> None:
    c = clock()
    c.writing_since = since
    assert c.write_check(now) == expected


def test_write_waiting_at_the_streams_end_has_stalled() -> None:
    c = clock(cut_at=104.0)
    assert c.write_check(103.5) == 104.0  # the end comes before the quarter
    c.writing_since = 103.9
    assert c.write_check(104.0) is None


def test_log_milliseconds_count_from_the_request() -> None:
    assert clock().ms(101.5) == 1500.0


async def test_the_relays_clock_is_the_loops_own() -> None:
    """On asyncio's loops the relay reads ``time.monotonic`` itself (what ``loop.time`` wraps,
    without its Python frame); a loop with its own clock keeps it."""
    loop = asyncio.get_running_loop()
    assert type(loop).time is asyncio.BaseEventLoop.time
    assert loop_clock(loop) is time.monotonic
    before = loop.time()
    assert before <= loop_clock(loop)() <= loop.time()

    class OwnClock(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return 42.0

    other = OwnClock()
    try:
        assert loop_clock(other)() == 42.0
    finally:
        other.close()
