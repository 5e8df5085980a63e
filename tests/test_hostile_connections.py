"""Connections that cost work: bodies sent after an early answer, bodies and headers that never
finish, and more idle connections than the server should hold. Real uvicorn, raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from dev.guard import guarded
from dev.inprocess import serve_asgi
from tests.conftest import Function

MakeFunction = Callable[..., Awaitable[Function]]
TOKEN = "tok_hostile_client_0123456789"


class Raw:
    """One raw client connection; every read is bounded (5 s), so a test fails, never hangs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, url: str) -> Raw:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def read_response(self) -> tuple[str, dict[str, str], bytes]:
        """One response with a Content-Length body: status line, headers, body."""
        data = b""
        async with asyncio.timeout(5):
            while b"\r\n\r\n" not in data:
                piece = await self.loop.sock_recv(self.sock, 65536)
                assert piece, data
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            status, *lines = head.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            while len(body) < int(headers.get("content-length", "0")):
                piece = await self.loop.sock_recv(self.sock, 65536)
                assert piece
                body += piece
        return status, headers, body

    async def closed_by_server(self) -> bool:
        """True once the server closes (EOF or reset); bounded by 5 s."""
        async with asyncio.timeout(5):
            while True:
                try:
                    piece = await self.loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:
                    return True
                if not piece:
                    return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def raws() -> AsyncIterator[list[Raw]]:
    opened: list[Raw] = []
    yield opened
    for raw in opened:
        raw.close()


def post_head(url: str, length: int, *extra: str) -> bytes:
    parts = urlsplit(url)
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("env", "extra", "status"),
    [
        ({"AUTH_TOKENS": TOKEN}, (), "401"),  # no token: refused before the body is read
        ({}, (), "413"),  # declared larger than MAX_BODY_BYTES
        ({}, ("Content-Type: text/plain",), "415"),
    ],
)
async def test_an_answer_sent_before_the_body_was_read_closes_the_connection(
    env: dict[str, str],
    extra: tuple[str, ...],
    status: str,
    make_function: MakeFunction,
    raws: list[Raw],
) -> None:
    function = await make_function(**env)
    raw = await Raw.open(function.url)
    raws.append(raw)
    head = post_head(function.url, 100_000_000, *extra)
    if extra:
        head = head.replace(b"Content-Type: application/json\r\n", b"")
    await raw.send(head + b"x" * 65536)  # the caller goes on sending: nobody will read it
    line, headers, body = await raw.read_response()
    assert line.split()[1] == status
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["type"]
    assert await raw.closed_by_server()  # not kept open to read and discard 100 MB


async def test_a_body_that_does_not_arrive_in_time_is_408_and_closed(
    make_function: MakeFunction, raws: list[Raw]
) -> None:
    function = await make_function(BODY_READ_TIMEOUT="0.2")
    raw = await Raw.open(function.url)
    raws.append(raw)
    await raw.send(post_head(function.url, 100) + b'{"prompt":')  # and then nothing
    line, headers, body = await raw.read_response()
    assert line.split()[1] == "408"
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["type"] == "request_timeout"
    assert await raw.closed_by_server()


async def test_an_answer_after_the_whole_body_keeps_the_connection(
    make_function: MakeFunction, raws: list[Raw]
) -> None:
    function = await make_function()
    raw = await Raw.open(function.url)
    raws.append(raw)
    for _ in range(2):  # the same connection serves a second request
        await raw.send(post_head(function.url, 5) + b"nope!")
        line, headers, body = await raw.read_response()
        assert line.split()[1] == "400"
        assert "connection" not in headers
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def test_headers_that_do_not_arrive_in_time_close_the_connection(raws: list[Raw]) -> None:
    url, stop = await serve_asgi(ok_app, lifespan="off", http=guarded(0.2, 100))
    try:
        idle, partial, fine = [await Raw.open(url) for _ in range(3)]
        raws.extend([idle, partial, fine])
        await partial.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        for _ in range(2):  # a whole request in time is served, also on a kept-alive connection
            await fine.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await fine.read_response())[2] == b"ok"
        assert await idle.closed_by_server()
        assert await partial.closed_by_server()
    finally:
        await stop()


async def test_connections_past_the_cap_get_503_at_once(raws: list[Raw]) -> None:
    url, stop = await serve_asgi(ok_app, lifespan="off", http=guarded(60, 3), timeout_keep_alive=60)
    try:
        for _ in range(3):
            raw = await Raw.open(url)
            raws.append(raw)
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await raw.read_response())[2] == b"ok"  # open and kept alive
        extra = await Raw.open(url)
        raws.append(extra)
        line, headers, _ = await extra.read_response()
        assert line.split()[1] == "503"
        assert headers["connection"] == "close"
        assert await extra.closed_by_server()
    finally:
        await stop()
