"""The edges of a stream's life: the caller leaving, the deadline, silence, and the log line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from dev.demo_upstream import DEMO_REPLY, DemoUpstream, Scenario
from lib.asgi import Exchange
from tests.conftest import CANARY_KEY, Function, LogTap
from tests.streams import canonical_events, completion_text, post, read_until

MakeFunction = Callable[..., Awaitable[Function]]


# --- the caller goes away: the upstream request is closed promptly, in every phase --------------


async def test_disconnect_while_waiting_for_upstream_headers(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(hang_before_headers=True))
    task = asyncio.create_task(post(http, function.url, {"prompt": "x"}))
    seen = await demo.next_request()
    task.cancel()  # aiohttp closes the connection of a cancelled request
    await asyncio.wait_for(seen.closed.wait(), 1)


async def test_disconnect_before_the_first_token(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(silence_before_first=60))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 200
    resp.close()
    await asyncio.wait_for(demo.seen[0].closed.wait(), 1)


async def test_disconnect_mid_stream(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=3))
    resp = await post(http, function.url, {"prompt": "x"})
    await read_until(resp, b"\n\n", 3)
    resp.close()
    await asyncio.wait_for(demo.seen[0].closed.wait(), 1)
    assert not gate.is_set()


async def test_disconnect_is_logged(
    function: Function,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    demo.push(Scenario(silence_before_first=60))
    resp = await post(http, function.url, {"prompt": "x"})
    resp.close()
    record = json.loads((await logs.requests(1))[-1])
    assert record["client_disconnected"] is True
    assert record["status"] == 200


# --- the deadline -----------------------------------------------------------------------------


async def test_deadline_ends_the_stream_with_a_notice(
    make_function: MakeFunction,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    # No vercel.json in tmp_path: MAX_DURATION is the fallback. Cut at 1.0 - 0.5 s.
    function = await make_function(root=tmp_path, MAX_DURATION="1", DEADLINE_MARGIN="0.5")
    demo.push(Scenario(after=2, ending="stall"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await post(http, function.url, {"prompt": "x"})
    events = canonical_events(await resp.read())
    elapsed = loop.time() - started
    assert 0.4 <= elapsed < 1.0
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "deadline_exceeded"
    assert "time limit" in error["message"]
    assert completion_text(events[:-1])  # what arrived before the cut was relayed
    await asyncio.wait_for(demo.seen[0].closed.wait(), 1)


async def test_deadline_before_headers_is_a_504(
    make_function: MakeFunction,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    function = await make_function(root=tmp_path, MAX_DURATION="0.6", DEADLINE_MARGIN="0.3")
    demo.push(Scenario(hang_before_headers=True))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 504
    assert (await resp.json())["error"]["type"] == "deadline_exceeded"


# --- keep-alives while the upstream thinks ------------------------------------------------------


async def test_keepalives_while_silent_never_break_the_classic_helper(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(KEEPALIVE_INTERVAL="0.05")
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=1))
    resp = await post(http, function.url, {"prompt": "x"})
    received = await read_until(resp, b'"id":"keepalive"', 3)
    gate.set()
    received += await resp.content.read()
    events = canonical_events(received)  # every keep-alive is a JSON event with choices[0].text
    assert completion_text(events) == DEMO_REPLY


async def test_keepalives_are_comments_for_chat(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(KEEPALIVE_INTERVAL="0.05")
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=1))
    resp = await post(http, function.url, {"messages": [{"role": "user", "content": "x"}]})
    await read_until(resp, b": keep-alive\n\n", 2)
    gate.set()
    await resp.read()


# --- the log line ------------------------------------------------------------------------------


async def test_one_json_log_line_per_request(
    function: Function,
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    body = {"prompt": "secret prompt text", "stream_options": {"include_usage": True}}
    await (await post(http, function.url, body)).read()
    await (await http.get(function.url)).read()
    lines = await logs.requests(2)
    assert len(lines) == 2
    ok, rejected = (json.loads(line) for line in lines)
    assert ok["status"] == 200
    assert ok["shape"] == "completion"
    assert ok["model"] == "gpt-4o-mini"
    assert ok["finish_reason"] == "stop"
    assert ok["usage"]["completion_tokens"] > 0
    assert ok["events"] > 5
    assert ok["bytes"] > 0
    assert ok["first_upstream_byte_ms"] <= ok["first_event_ms"] <= ok["duration_ms"]
    assert ok["client_disconnected"] is False
    assert len(ok["request_id"]) == 32
    assert list(ok)[:4] == ["event", "request_id", "method", "status"]  # read by eye too
    assert rejected["status"] == 405
    assert rejected["error_type"] == "method_not_allowed"
    for line in lines:
        assert "secret prompt" not in line
        assert CANARY_KEY not in line


async def test_prompts_are_logged_only_when_asked(
    make_function: MakeFunction,
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    function = await make_function(LOG_PROMPTS="true")
    await (await post(http, function.url, {"prompt": "log me\nplease"})).read()
    line = (await logs.requests(1))[-1]
    assert json.loads(line)["prompt"] == "log me\nplease"
    assert "\n" not in line


@pytest.mark.parametrize("env", [{}, {"MAX_DURATION": "5"}])
def test_vercel_json_max_duration_is_the_default_deadline(env: dict[str, str]) -> None:
    from lib.config import load_settings

    assert load_settings(env).stream.max_duration == 60.0


async def test_the_disconnect_watcher_waits_on_past_other_messages() -> None:
    """A server may hand the app other messages after the body (ASGI allows it): the watcher
    reads past them and still ends the exchange on ``http.disconnect``."""

    calls = 0
    second_call = asyncio.Event()
    leave: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        second_call.set()
        return await leave

    async def send(message: object) -> None:
        pass

    exchange = Exchange({"type": "http", "headers": []}, receive, send)

    async def held() -> None:
        async with exchange:
            await asyncio.Event().wait()  # until the watcher cancels it

    task = asyncio.create_task(held())
    await asyncio.wait_for(second_call.wait(), 5)  # the first message read, watching again
    assert not task.done()
    assert not exchange.disconnected
    leave.set_result({"type": "http.disconnect"})
    await asyncio.wait_for(task, 5)  # absorbed: the exchange ended because the caller left
    assert exchange.disconnected
