"""The upstream client at unit level: failures that a loopback server cannot produce (DNS, TLS,
an aiohttp timeout), injected with aioresponses, the shared session's lifetime, and its
connections going back to the pool after a stream."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses

from dev.demo_upstream import DemoUpstream, Scenario
from lib.config import load_settings
from lib.errors import UpstreamError, UpstreamTimeout
from lib.request import UpstreamRequest
from lib.upstream import DRAIN_SECONDS, UpstreamClient
from tests.conftest import Function, LogTap
from tests.streams import post

URL = "https://api.example.test/v1/chat/completions"
KEY = "sk-unit-test-key-0123456789"
REQUEST = UpstreamRequest(URL, b'{"stream":true}', "chat")


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as mock:
        yield mock


@pytest.fixture
async def client() -> UpstreamClient:
    return UpstreamClient(load_settings({"OPENAI_API_KEY": KEY}).upstream)


def _key() -> ConnectionKey:
    return ConnectionKey("api.example.test", 443, True, True, None, None, None)


@pytest.mark.parametrize(
    ("exception", "kind", "needle"),
    [
        (
            aiohttp.ClientConnectorDNSError(_key(), OSError(-2, "Name not known")),
            UpstreamError,
            "connect",
        ),
        (
            aiohttp.ClientConnectorCertificateError(_key(), ssl.SSLCertVerificationError("bad")),
            UpstreamError,
            "connect",
        ),
        (aiohttp.ServerDisconnectedError(), UpstreamError, "ServerDisconnectedError"),
        (aiohttp.ConnectionTimeoutError(), UpstreamTimeout, "in time"),
        (aiohttp.SocketTimeoutError(), UpstreamTimeout, "in time"),
    ],
    ids=["dns", "tls", "disconnected", "connect-timeout", "read-timeout"],
)
async def test_aiohttp_failures_become_our_errors(
    mocked: aioresponses,
    client: UpstreamClient,
    exception: Exception,
    kind: type[UpstreamError],
    needle: str,
) -> None:
    mocked.post(URL, exception=exception)
    with pytest.raises(kind) as caught:
        await client.open(REQUEST, KEY)
    assert type(caught.value) is kind  # the most specific class, not a parent
    assert needle in caught.value.message
    assert KEY not in caught.value.message
    await client.close()


async def test_one_session_and_connection_reused_across_requests(
    upstream_url: str, demo: DemoUpstream
) -> None:
    """A warm function skips TCP (and TLS) set-up: the second request rides the first one's
    connection, from the same session."""
    client = UpstreamClient(
        load_settings({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": upstream_url}).upstream
    )
    request = UpstreamRequest(upstream_url + "/chat/completions", b'{"stream":true}', "chat")
    ports = []
    sessions = []
    try:
        for _ in range(2):
            gate = asyncio.Event()  # holds the body open so the connection is still ours
            demo.push(Scenario(gate=gate))
            stream = await client.open(request, KEY)
            connection = stream._response.connection
            assert connection is not None
            assert connection.transport is not None
            ports.append(connection.transport.get_extra_info("sockname")[1])
            sessions.append(client._session)
            gate.set()
            while await stream.read():
                pass
            stream.release()
    finally:
        await client.close()
    assert sessions[0] is sessions[1]
    assert ports[0] == ports[1]


async def test_session_belongs_to_the_running_loop() -> None:
    """A warm process reuses its session; a new event loop (a new process in effect) gets a new
    one instead of touching a session bound to a dead loop."""
    client = UpstreamClient(load_settings({"OPENAI_API_KEY": KEY}).upstream)
    assert client._session is None  # nothing at construction (import time)

    async def grab() -> object:
        session = client._session_for_loop()
        assert session is client._session_for_loop()
        return session

    first = await grab()
    assert isinstance(first, aiohttp.ClientSession)
    other_loop_session: list[object] = []

    def in_other_loop() -> None:
        async def run() -> None:
            other_loop_session.append(await grab())
            await client.close()

        asyncio.run(run())

    await asyncio.to_thread(in_other_loop)
    assert other_loop_session[0] is not first
    await first.close()


def test_no_total_timeout_and_a_deliberate_pool_size() -> None:
    client = UpstreamClient(
        load_settings({"OPENAI_API_KEY": KEY, "UPSTREAM_MAX_CONNECTIONS": "7"}).upstream
    )

    async def inspect() -> tuple[aiohttp.ClientTimeout, int]:
        session = client._session_for_loop()
        limit = session.connector.limit if session.connector else -1
        timeout = session.timeout
        await client.close()
        return timeout, limit

    timeout, limit = asyncio.run(inspect())
    assert timeout.total is None
    assert timeout.sock_read is None
    assert timeout.sock_connect == 10.0
    assert limit == 7


CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_a_body_that_ends_after_done_leaves_its_connection_pooled(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    """The body's end (the chunked encoding's last chunk) comes after ``[DONE]``: the caller
    gets its whole answer first, then the function reads that end, and the next request
    rides the same connection (no new TCP or TLS set-up on a warm instance)."""
    body_end = asyncio.Event()
    demo.push(Scenario(eof_gate=body_end))
    async with await post(http, function.url, CHAT) as response:
        answer = await asyncio.wait_for(response.read(), 5)  # while the upstream body is open
    assert answer.endswith(b"data: [DONE]\n\n")
    body_end.set()
    await logs.requests(1)  # the first request is over, its connection settled
    async with await post(http, function.url, CHAT) as response:
        assert (await response.read()).endswith(b"data: [DONE]\n\n")
    first, second = demo.seen
    assert first.peer is not None
    assert second.peer == first.peer


async def test_a_body_that_never_ends_after_done_is_dropped_in_bounded_time(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    """An upstream that keeps its body open after ``[DONE]`` is not waited for past
    ``DRAIN_SECONDS``: the request ends, and its connection is dropped, not pooled."""
    demo.push(Scenario(eof_gate=asyncio.Event()))  # never set
    async with await post(http, function.url, CHAT) as response:
        assert (await asyncio.wait_for(response.read(), 5)).endswith(b"data: [DONE]\n\n")
    line = json.loads((await logs.requests(1))[0])
    assert line["status"] == 200
    assert "error_type" not in line
    async with asyncio.timeout(5):
        await demo.seen[0].closed.wait()  # the function dropped the connection
    async with await post(http, function.url, CHAT) as response:
        await response.read()
    assert demo.seen[1].peer != demo.seen[0].peer
    assert DRAIN_SECONDS < 1
