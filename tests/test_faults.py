"""The fault suite: every upstream fault of issue 5, with retries on, and its asserted outcome.

Before the first byte reaches the caller a transient fault is retried (or handed to a fallback)
and the caller may never notice; after it, a fault ends the stream in-band, is never retried,
and never looks like a clean end. Everything runs for real: the demo upstream on loopback, the
function under uvicorn, an aiohttp client. The retry waits are real but tiny (base 10 ms), except
where a test checks that a wait the upstream asked for was honoured.
"""

from __future__ import annotations

import asyncio
import json
import os
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from dev.demo_upstream import DEMO_REPLY, DemoUpstream, Scenario, refusing_base_url
from tests.conftest import Function, LogTap
from tests.streams import canonical_events, chat_text, completion_text, post, read_until

MakeFunction = Callable[..., Awaitable[Function]]
RETRYING = {
    "UPSTREAM_MAX_RETRIES": "2",
    "UPSTREAM_RETRY_BASE_DELAY": "0.01",
    "UPSTREAM_RETRY_MAX_DELAY": "1",
}
CHAT = {"messages": [{"role": "user", "content": "x"}]}


@pytest.fixture
async def retrying(make_function: MakeFunction) -> Function:
    return await make_function(**RETRYING)


async def last_log(logs: LogTap) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((await logs.requests(1))[-1])
    return record


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    return error


# --- before the first byte: retried -------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
async def test_transient_status_is_retried_and_the_caller_never_sees_it(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap, status: int
) -> None:
    demo.push(Scenario(status=status), Scenario(status=status))
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == 200
    assert completion_text(canonical_events(await resp.read())) == DEMO_REPLY
    assert len(demo.seen) == 3
    record = await last_log(logs)
    assert (record["attempts"], record["upstream"], record["status"]) == (3, "primary", 200)


async def test_retries_are_bounded_then_the_last_failure_is_answered(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=500), Scenario(status=502), Scenario(status=503), Scenario())
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == 502
    assert "503" in (await error_of(resp))["message"]
    assert len(demo.seen) == 3  # UPSTREAM_MAX_RETRIES=2: three attempts, not four


@pytest.mark.parametrize(("status", "answered"), [(400, 400), (401, 502), (403, 502), (404, 400)])
async def test_permanent_status_is_never_retried(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession, status: int, answered: int
) -> None:
    demo.push(Scenario(status=status))
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == answered
    await error_of(resp)
    assert len(demo.seen) == 1


async def test_429_with_a_short_wait_is_retried_after_that_wait(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=429, headers={"retry-after-ms": "300"}))
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(post(http, retrying.url, {"prompt": "x"}))
    await demo.next_request()
    first = loop.time()
    await demo.next_request()
    assert loop.time() - first >= 0.3  # the backoff alone would be ~10 ms
    resp = await task
    assert resp.status == 200
    assert completion_text(canonical_events(await resp.read())) == DEMO_REPLY


async def test_429_with_a_long_wait_is_passed_through_at_once(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=429, headers={"Retry-After": "30"}))
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "30"
    assert (await error_of(resp))["type"] == "rate_limit_error"
    assert len(demo.seen) == 1


async def test_429_that_says_do_not_retry_is_not_retried(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=429, headers={"x-should-retry": "false"}))
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == 429
    assert len(demo.seen) == 1


async def test_reset_before_the_first_byte_is_retried(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(reset_before_headers=True))
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == 200
    assert completion_text(canonical_events(await resp.read())) == DEMO_REPLY
    assert len(demo.seen) == 2


async def test_connection_refused_is_retried_then_502(
    make_function: MakeFunction, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    with refusing_base_url() as refused:
        function = await make_function(OPENAI_BASE_URL=refused, **RETRYING)
        resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 502
    assert "connect" in (await error_of(resp))["message"]
    assert (await last_log(logs))["attempts"] == 3


async def test_accepts_and_never_answers_is_504_without_a_retry(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(UPSTREAM_FIRST_BYTE_TIMEOUT="0.2", **RETRYING)
    demo.push(Scenario(hang_before_headers=True), Scenario())
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 504
    assert (await error_of(resp))["type"] == "upstream_timeout"
    assert len(demo.seen) == 1  # it had its whole limit once; asking again doubles the wait
    await asyncio.wait_for(demo.seen[0].closed.wait(), 1)


async def test_accepts_and_never_answers_goes_to_the_fallback(
    make_function: MakeFunction,
    demo: DemoUpstream,
    upstream_url: str,
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    fallbacks = json.dumps([{"base_url": upstream_url}])
    function = await make_function(
        UPSTREAM_FIRST_BYTE_TIMEOUT="0.2", UPSTREAM_FALLBACKS=fallbacks, **RETRYING
    )
    demo.push(Scenario(hang_before_headers=True), Scenario())
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 200
    assert completion_text(canonical_events(await resp.read())) == DEMO_REPLY
    record = await last_log(logs)
    assert (record["upstream"], record["attempts"]) == ("fallback1", 2)
    await asyncio.wait_for(demo.seen[0].closed.wait(), 1)


async def test_a_200_that_is_not_an_event_stream_is_not_retried(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(content_type="application/json"))
    resp = await post(http, retrying.url, {"prompt": "x"})
    assert resp.status == 502
    assert (await error_of(resp))["type"] == "upstream_protocol_error"
    assert len(demo.seen) == 1


async def test_no_retry_waits_past_the_deadline(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    function = await make_function(
        root=tmp_path,
        MAX_DURATION="1.5",
        DEADLINE_MARGIN="0.5",
        UPSTREAM_MAX_RETRIES="5",
        UPSTREAM_RETRY_BASE_DELAY="2",  # the first wait alone would cross the 1 s cut
        UPSTREAM_RETRY_MAX_DELAY="8",
    )
    demo.push(Scenario(status=503), Scenario())
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 502
    assert loop.time() - started < 1.0
    assert len(demo.seen) == 1


async def test_caller_leaving_during_a_retry_wait_stops_the_retries(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    function = await make_function(UPSTREAM_RETRY_BASE_DELAY="5", UPSTREAM_MAX_RETRIES="2")
    demo.push(Scenario(status=503))
    task = asyncio.create_task(post(http, function.url, {"prompt": "x"}))
    seen = await demo.next_request()
    await seen.finished.wait()  # the 503 went out; the function now waits 3.75..5 s
    task.cancel()
    record = await last_log(logs)  # the request's life is over: nothing can follow
    assert record["client_disconnected"] is True
    assert record["attempts"] == 1
    assert len(demo.seen) == 1


# --- fallbacks ----------------------------------------------------------------------------------


async def test_fallback_serves_when_the_primary_cannot(
    make_function: MakeFunction,
    demo: DemoUpstream,
    upstream_url: str,
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    fallbacks = [{"base_url": upstream_url, "api_key_env": "FALLBACK_KEY", "model": "fb-model"}]
    with refusing_base_url() as refused:
        function = await make_function(
            OPENAI_BASE_URL=refused,
            UPSTREAM_FALLBACKS=json.dumps(fallbacks),
            FALLBACK_KEY="sk-fallback-0123456789",
            **RETRYING,
        )
        resp = await post(http, function.url, CHAT)
        assert resp.status == 200
        assert chat_text(canonical_events(await resp.read())) == DEMO_REPLY
    (seen,) = demo.seen
    assert seen.headers["Authorization"] == "Bearer sk-fallback-0123456789"
    assert seen.json["model"] == "fb-model"
    record = await last_log(logs)
    assert (record["upstream"], record["attempts"]) == ("fallback1", 4)
    assert "sk-fallback" not in json.dumps(record)


async def test_fallback_is_not_used_for_the_callers_mistake(
    make_function: MakeFunction, demo: DemoUpstream, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    fallbacks = json.dumps([{"base_url": upstream_url}])
    function = await make_function(UPSTREAM_FALLBACKS=fallbacks, **RETRYING)
    demo.push(Scenario(status=400))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 400
    assert len(demo.seen) == 1


# --- after the first byte: in-band, never retried, never a clean end ----------------------------


@pytest.mark.parametrize(
    ("scenario", "kind", "env"),
    [
        (Scenario(after=3, ending="stall"), "upstream_timeout", {"UPSTREAM_IDLE_TIMEOUT": "0.3"}),
        (Scenario(after=3, ending="reset"), "upstream_error", {}),
        (Scenario(after=3, ending="eof"), "upstream_error", {}),
        (Scenario(after=3, ending="error"), "upstream_error", {}),
        (
            Scenario(after=3, ending="stall"),
            "stream_duration_exceeded",
            {"MAX_STREAM_SECONDS": "0.3"},
        ),
        (Scenario(tokens=["la "] * 5000), "repetitive_output", {"REPETITION_WINDOW": "300"}),
    ],
    ids=["stall", "reset", "eof-without-done", "in-band-error", "max-duration", "looping"],
)
async def test_fault_after_the_first_byte_is_in_band_and_not_retried(
    make_function: MakeFunction,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    logs: LogTap,
    scenario: Scenario,
    kind: str,
    env: dict[str, str],
) -> None:
    function = await make_function(**RETRYING, **env)
    demo.push(scenario, Scenario())
    resp = await post(http, function.url, CHAT)
    assert resp.status == 200
    events = canonical_events(await resp.read())
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == kind
    assert len(events) < 1000  # the looping stream was cut early, not relayed to its end
    assert len(demo.seen) == 1
    record = await last_log(logs)
    assert (record["error_type"], record["attempts"]) == (kind, 1)
    await asyncio.wait_for(demo.seen[0].finished.wait(), 1)  # no upstream request lingers


async def test_upstream_session_closing_mid_stream_is_an_in_band_error(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    # A shutdown (lifespan) closing the shared session while a stream is in flight. aiohttp does
    # not wake the pending read; the relay's next wake-up (here a 0.1 s keep-alive) finds the
    # connection closed, and that must be an in-band error, not an exception in the server.
    function = await make_function(KEEPALIVE_INTERVAL="0.1")
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=2))
    resp = await post(http, function.url, CHAT)
    received = await read_until(resp, b"\n\n", 3)
    assert function.handler.client is not None
    await function.handler.client.close()
    raw = (received + await resp.read()).replace(b": keep-alive\n\n", b"")
    events = canonical_events(raw)
    assert json.loads(events[-1])["error"]["type"] == "upstream_error"
    assert (await last_log(logs))["error_type"] == "upstream_error"


# --- framing and splitting: nothing is lost or corrupted ---------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(framing="crlf"),
        Scenario(framing="cr"),
        Scenario(framing="crlf", write="byte"),
        Scenario(framing="cr", write="byte"),
    ],
    ids=["crlf", "cr", "crlf-bytewise", "cr-bytewise"],
)
async def test_framing_and_characters_split_across_reads_survive(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession, scenario: Scenario
) -> None:
    scenario.text = "Grüße 🚀, ok — 漢字\u2028end"  # every character split at every byte by "byte"
    demo.push(scenario)
    events = canonical_events(await (await post(http, retrying.url, CHAT)).read())
    assert events[-1] == "[DONE]"
    assert chat_text(events) == scenario.text


# --- limits: one bad stream cannot hurt the process ---------------------------------------------


async def test_ten_megabyte_line_is_an_in_band_error_with_bounded_memory(
    retrying: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(huge_line_bytes=10 * 1024 * 1024))
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        resp = await post(http, retrying.url, CHAT)
        raw = await resp.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    events = canonical_events(raw)
    assert json.loads(events[-1])["error"]["type"] == "upstream_protocol_error"
    assert "longer than 1048576 bytes" in events[-1]
    # Everything in this process (function, upstream, client) together: well under the line.
    assert peak - base < 4 * 1024 * 1024, peak - base
    await asyncio.wait_for(demo.seen[0].closed.wait(), 1)


async def test_silent_phase_before_the_first_token_keeps_alive_and_completes(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    # The 90 s phase on a compressed timescale (bench/soak.py runs the real 90 s): silence 1.5 s,
    # keep-alive every 0.1 s, every timeout well above the silence.
    function = await make_function(
        KEEPALIVE_INTERVAL="0.1", UPSTREAM_IDLE_TIMEOUT="5", UPSTREAM_FIRST_BYTE_TIMEOUT="5"
    )
    demo.push(Scenario(silence_before_first=1.5))
    resp = await post(http, function.url, CHAT)
    assert resp.status == 200
    raw = await resp.read()
    pings = raw.count(b": keep-alive\n\n")
    assert pings >= 10
    events = canonical_events(raw.replace(b": keep-alive\n\n", b""))
    assert chat_text(events) == DEMO_REPLY
    assert events[-1] == "[DONE]"


async def test_a_client_that_stops_reading_stops_the_upstream(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """Backpressure end to end: uvicorn's send() waits for the socket, the relay waits for
    send(), aiohttp's reader stops reading, the kernel buffers fill, the upstream's write()
    blocks. Without it the function would read all 256 MiB and buffer it for the caller."""
    token = "x" * 4096
    count = 64 * 1024  # 256 MiB of text
    function = await make_function(REPETITION_WINDOW="0", UPSTREAM_IDLE_TIMEOUT="30")
    demo.push(Scenario(tokens=[token] * count))
    resp = await post(http, function.url, CHAT)
    await read_until(resp, b"xxxx")  # the stream is flowing; now this client stops reading
    seen = demo.seen[0]
    rss_before = _rss()
    # Wait for the upstream to stall: no event written for 0.5 s (bounded: 20 s).
    async with asyncio.timeout(20):
        last = -1
        while seen.events_sent != last:
            last = seen.events_sent
            await asyncio.sleep(0.5)
    assert seen.events_sent < count // 4, seen.events_sent  # < 64 MiB left the upstream
    assert _rss() - rss_before < 64 * 1024 * 1024
    stalled_at = seen.events_sent
    # Reading again lets the upstream go on: it was waiting, not broken. (Read until it does:
    # how much sits in the buffers between it and this client depends on the kernel and on
    # the relay's write sizes.)
    async with asyncio.timeout(20):
        while seen.events_sent <= stalled_at:
            assert await resp.content.readany()
    assert not seen.finished.is_set()
    resp.close()
    await asyncio.wait_for(seen.closed.wait(), 1)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
