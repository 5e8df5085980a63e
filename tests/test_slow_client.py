"""A caller that stops reading: every write is bounded, by the write-stall timeout, the deadline
and ``MAX_STREAM_SECONDS``; the stream ends, its upstream connection closes, its lease goes.

The client is a real socket with a small receive buffer that sends its request and never reads
again. The upstream offers 16 MiB at once, far more than the kernel buffers between the function
and that client can hold, so the function's writes must wait: no timing is needed to get there.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from tests.conftest import Function, LogTap

MakeFunction = Callable[..., Awaitable[Function]]
BIG = Scenario(tokens=["x" * 4096] * 4096)  # 16 MiB of text, as fast as the socket takes it


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


async def stop_reading_after_request(url: str, sockets: list[socket.socket]) -> socket.socket:
    """Send one streaming request from a socket that then never reads."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    await asyncio.get_running_loop().sock_sendall(sock, head + body)
    return sock


async def drained_to_the_end(sock: socket.socket) -> bytes:
    """Read whatever the kernel still holds; returns once the server has closed."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(10):
        while True:
            try:
                piece = await loop.sock_recv(sock, 1 << 20)
            except ConnectionResetError:
                break
            if not piece:
                break
            received += piece
    return bytes(received)


async def test_a_caller_that_stops_reading_is_cut_after_the_write_stall_timeout(
    make_function: MakeFunction,
    demo: DemoUpstream,
    logs: LogTap,
    sockets: list[socket.socket],
) -> None:
    function = await make_function(
        MAX_CONCURRENT_STREAMS="1",
        TOKEN_BUDGET="100000/day",
        CLIENT_WRITE_TIMEOUT="0.2",
        REPETITION_WINDOW="0",
        MAX_STREAM_SECONDS="0",
    )
    demo.push(BIG)
    sock = await stop_reading_after_request(function.url, sockets)
    line = json.loads((await logs.requests(1))[0])
    assert line["status"] == 200
    assert line["error_type"] == "client_stalled"
    assert line["bytes"] < 16 * 1024 * 1024  # cut while most of the answer was still upstream
    # The upstream may have gone on generating into the buffers: the whole reservation is
    # charged (the prompt's 2 bytes + 4 + 3, and the default max_tokens of 1024).
    assert line["tokens_charged"] == 2 + 4 + 3 + 1024
    seen = demo.seen[0]
    await asyncio.wait_for(seen.closed.wait(), 5)  # the upstream connection was closed
    received = await drained_to_the_end(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"[DONE]" not in received
    # The lease went with the stream: the same caller can open a stream again.
    assert function.handler.limiter is not None
    limiter = function.handler.limiter
    assert await limiter.store.acquire([("streams:ip:127.0.0.1", 1)], "probe", 30, 0) is None


@pytest.mark.parametrize(
    "limit", [{"MAX_STREAM_SECONDS": "1"}, {"MAX_DURATION": "3", "DEADLINE_MARGIN": "2"}]
)
async def test_the_stream_limits_end_a_stream_whose_caller_stopped_reading(
    limit: dict[str, str],
    make_function: MakeFunction,
    demo: DemoUpstream,
    logs: LogTap,
    sockets: list[socket.socket],
    tmp_path: Path,
) -> None:
    """The write-stall timeout is an hour here: only the stream's own limit can end it. (With
    no vercel.json in the root, MAX_DURATION is the deadline.)"""
    function = await make_function(
        root=tmp_path, CLIENT_WRITE_TIMEOUT="3600", REPETITION_WINDOW="0", **limit
    )
    demo.push(BIG)
    sock = await stop_reading_after_request(function.url, sockets)
    line = json.loads((await logs.requests(1))[0])
    # The stream's last write was waiting when its limit came (almost always), or it had
    # just gone into the kernel's buffer with the in-band error after it; never a hang.
    assert line["error_type"] in ("client_stalled", "stream_duration_exceeded", "deadline_exceeded")
    await asyncio.wait_for(demo.seen[0].closed.wait(), 5)
    assert b"[DONE]" not in await drained_to_the_end(sock)
