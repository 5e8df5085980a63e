"""``/api/v1/responses`` under the same protection as ``/api/generate``: tokens, rate limits,
token budgets (charged from the upstream's usage), and the invocation deadline, which ends a
Responses stream with ``response.failed`` (docs/responses.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from dev.demo_upstream import DemoUpstream, Scenario
from lib.sse import SSEDecoder
from tests.conftest import Function, LogTap
from tests.streams import post
from tests.test_protection import freeze, wait_requests

MakeFunction = Callable[..., Awaitable[Function]]
ROUTE = "?api=v1&route=responses"
TOKEN = "static-token-0123456789"


async def test_a_token_is_required_when_auth_is_on(
    make_function: MakeFunction, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    function = await make_function(AUTH_TOKENS=TOKEN)
    resp = await post(http, function.url + ROUTE, {"input": "x"})
    assert resp.status == 401
    assert demo.seen == []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await post(http, function.url + ROUTE, {"input": "x"}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["object"] == "response"


async def test_the_rate_limit_counts_responses_requests(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(RATE_LIMIT="1/minute")
    freeze(function)
    ok = await post(http, function.url + ROUTE, {"input": "x"})
    assert ok.status == 200
    await ok.read()
    over = await post(http, function.url + ROUTE, {"input": "x"})
    assert over.status == 429
    assert (await over.json())["error"]["type"] == "rate_limit_exceeded"


async def test_the_token_budget_is_charged_the_upstreams_usage(
    make_function: MakeFunction, http: aiohttp.ClientSession, demo: DemoUpstream, logs: LogTap
) -> None:
    function = await make_function(TOKEN_BUDGET="5000/day")
    freeze(function)
    demo.push(Scenario(text="one two three"))
    resp = await post(http, function.url + ROUTE, {"input": "hello there", "stream": True})
    raw = await resp.read()
    final = json.loads(SSEDecoder().feed(raw)[-1].data)["response"]
    line = (await wait_requests(logs, 1))[-1]
    assert line["tokens_charged"] == final["usage"]["total_tokens"]
    assert line["tokens_charged"] > 0


async def test_the_deadline_ends_the_stream_with_response_failed(
    make_function: MakeFunction, http: aiohttp.ClientSession, demo: DemoUpstream, tmp_path: Path
) -> None:
    function = await make_function(root=tmp_path, MAX_DURATION="1", DEADLINE_MARGIN="0.5")
    demo.push(Scenario(after=2, ending="stall"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await post(http, function.url + ROUTE, {"input": "x", "stream": True})
    events = SSEDecoder().feed(await resp.read())
    assert loop.time() - started < 1.0
    kinds = [e.event for e in events]
    assert "response.output_text.delta" in kinds  # what arrived before the cut was relayed
    assert kinds[-2:] == ["error", "response.failed"]
    failed = json.loads(events[-1].data)["response"]
    assert failed["error"]["code"] == "deadline_exceeded"
