"""Protection end to end: the function behind real uvicorn, limits counted in memory or in a
real redis-server shared by two function instances, and the store going away mid-test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from lib.config import load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, Function, LogTap
from tests.redisproc import RedisServer
from tests.streams import post, read_until

MakeFunction = Callable[..., Awaitable[Function]]
T0 = 20_834 * 86_400.0 + 10  # 10 s into a minute, an hour and a day


def freeze(*functions: Function, now: float = T0) -> None:
    """Inject a fixed clock into the functions' limiters: windows never roll over mid-test."""
    for function in functions:
        assert function.handler.limiter is not None
        function.handler.limiter.clock = lambda: now


def request_lines(logs: LogTap) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in logs.lines if line.startswith("{")]
    return [p for p in parsed if p.get("event") == "request"]


async def wait_requests(logs: LogTap, count: int) -> list[dict[str, Any]]:
    """The request log lines, once ``count`` have been written (warnings are not counted)."""
    while len(request_lines(logs)) < count:
        await logs.wait_for(len(logs.lines) + 1)
    return request_lines(logs)


async def test_over_the_rate_limit_is_429_with_retry_after_and_ratelimit_fields(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(RATE_LIMIT="2/minute")
    freeze(function)
    ok = await post(http, function.url, {"prompt": "hi"})
    assert ok.status == 200
    assert ok.headers["RateLimit-Policy"] == '"requests";q=2;w=60'
    assert ok.headers["RateLimit"] == '"requests";r=1;t=50'
    await ok.read()
    await (await post(http, function.url, {"prompt": "hi"})).read()
    over = await post(http, function.url, {"prompt": "hi"})
    assert over.status == 429
    assert over.headers["Retry-After"] == "50"
    assert over.headers["RateLimit"] == '"requests";r=0;t=50'
    assert over.headers["RateLimit-Policy"] == '"requests";q=2;w=60'
    assert "x-should-retry" not in over.headers
    assert over.headers["Content-Type"] == "application/json"
    assert (await over.json())["error"]["type"] == "rate_limit_exceeded"


async def test_a_stream_slot_is_released_when_the_caller_hangs_up(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    function = await make_function(MAX_CONCURRENT_STREAMS="1")
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate), Scenario(gate=gate))
    first = await post(http, function.url, {"prompt": "hi"})
    await read_until(first, b'"text"')
    busy = await post(http, function.url, {"prompt": "hi"})
    assert busy.status == 429
    assert busy.headers["RateLimit-Policy"] == '"streams";q=1;qu="concurrent-requests"'
    assert "too many streams" in (await busy.json())["error"]["message"].lower()
    first.close()  # hang up mid-stream
    lines = await wait_requests(logs, 2)
    assert lines[-1]["client_disconnected"] is True
    again = await post(http, function.url, {"prompt": "hi"})
    assert again.status == 200
    gate.set()
    await again.read()


async def test_a_stream_slot_is_released_when_the_upstream_fails(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(MAX_CONCURRENT_STREAMS="1")
    demo.push(Scenario(status=500), Scenario(ending="reset", after=2))
    failed = await post(http, function.url, {"prompt": "hi"})
    assert failed.status == 502
    await failed.read()
    broken = await post(http, function.url, {"prompt": "hi"})
    await broken.read()
    ok = await post(http, function.url, {"prompt": "hi"})
    assert ok.status == 200
    await ok.read()


async def test_the_budget_is_settled_with_the_usage_the_upstream_reported(
    make_function: MakeFunction, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    function = await make_function(TOKEN_BUDGET="5000/day")
    freeze(function)
    first = await post(http, function.url, {"prompt": "hello there", "max_tokens": 1000})
    assert first.headers["x-ratelimit-remaining-tokens"] == str(5000 - 1000 - 3 - 4)
    await first.read()
    line = (await wait_requests(logs, 1))[-1]
    assert line["usage"]["total_tokens"] > 0
    assert line["tokens_charged"] == line["usage"]["total_tokens"]
    second = await post(http, function.url, {"prompt": "hello there", "max_tokens": 1000})
    expected = 5000 - line["tokens_charged"] - 1007
    assert second.headers["x-ratelimit-remaining-tokens"] == str(expected)
    await second.read()


async def test_a_spent_budget_is_429_that_sdks_must_not_retry(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(TOKEN_BUDGET="1000/day", MAX_TOKENS="2000")
    freeze(function)
    resp = await post(http, function.url, {"prompt": "hi", "max_tokens": 1500})
    assert resp.status == 429
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["Retry-After"] == str(86_400 - 10)
    assert (await resp.json())["error"]["type"] == "insufficient_quota"


async def test_two_instances_share_one_rate_limit_through_redis(
    make_function: MakeFunction, http: aiohttp.ClientSession, redis_url: str
) -> None:
    one = await make_function(RATE_LIMIT="3/minute", REDIS_URL=redis_url)
    two = await make_function(RATE_LIMIT="3/minute", REDIS_URL=redis_url)
    freeze(one, two)
    statuses = []
    for function in (one, two, one, two, one):
        resp = await post(http, function.url, {"prompt": "hi"})
        statuses.append(resp.status)
        await resp.read()
    assert statuses == [200, 200, 200, 429, 429]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_concurrent_requests_cannot_overspend_a_budget(
    backend: str,
    make_function: MakeFunction,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
) -> None:
    env = {"TOKEN_BUDGET": "350/day"}  # each request reserves 100 + 5: three fit
    if backend == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    instances = [await make_function(**env)]
    if backend == "redis":
        instances.append(await make_function(**env))
    freeze(*instances)
    gate = asyncio.Event()  # admitted streams stay open, so no reservation is settled early
    demo.push(*(Scenario(gate=gate) for _ in range(10)))
    responses = await asyncio.gather(
        *(
            post(http, instances[i % len(instances)].url, {"prompt": "hi", "max_tokens": 100})
            for i in range(10)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 3 + [429] * 7
    assert len(demo.seen) == 3
    gate.set()
    for resp in responses:
        await resp.read()


async def test_when_redis_dies_budgets_fail_closed_and_rate_limits_hold_per_instance(
    make_function: MakeFunction,
    http: aiohttp.ClientSession,
    make_redis: Callable[[], RedisServer],
    logs: LogTap,
) -> None:
    store = make_redis()
    budgeted = await make_function(TOKEN_BUDGET="100000/day", REDIS_URL=store.url)
    limited = await make_function(RATE_LIMIT="2/minute", REDIS_URL=store.url)
    freeze(budgeted, limited)
    for function in (budgeted, limited):
        resp = await post(http, function.url, {"prompt": "hi"})
        assert resp.status == 200
        await resp.read()
    assert any(k.startswith("sfn:budget:") for k in store.stored_keys())
    assert any(k.startswith("sfn:rate:") for k in store.stored_keys())
    store.stop()

    resp = await post(http, budgeted.url, {"prompt": "hi"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert (await resp.json())["error"]["type"] == "store_unavailable"

    statuses = []
    for _ in range(3):
        resp = await post(http, limited.url, {"prompt": "hi"})
        statuses.append(resp.status)
        await resp.read()
    assert statuses == [200, 200, 429]  # this instance's own count from here on
    fallbacks = [line for line in logs.lines if "falls back to this instance's memory" in line]
    assert len(fallbacks) == 1  # one warning a minute, not one per request
    assert all(CANARY_KEY not in line for line in logs.lines)


async def test_a_store_that_stops_answering_costs_at_most_its_timeout(
    make_function: MakeFunction, http: aiohttp.ClientSession, make_redis: Callable[[], RedisServer]
) -> None:
    store = make_redis()
    function = await make_function(
        TOKEN_BUDGET="100000/day", REDIS_URL=store.url, STORE_TIMEOUT="0.2"
    )
    await (await post(http, function.url, {"prompt": "hi"})).read()  # connection now pooled
    store.pause()
    started = time.monotonic()
    resp = await post(http, function.url, {"prompt": "hi"})
    elapsed = time.monotonic() - started
    assert resp.status == 503
    await resp.read()
    assert elapsed < 1.0, elapsed


def test_an_unprotected_deployment_warns_loudly_at_start(logs: LogTap) -> None:
    GenerateHandler(load_settings({"OPENAI_API_KEY": CANARY_KEY}))
    assert sum("UNPROTECTED" in line for line in logs.lines) == 1
    GenerateHandler(load_settings({"OPENAI_API_KEY": CANARY_KEY, "RATE_LIMIT": "20/minute"}))
    GenerateHandler(load_settings({"OPENAI_API_KEY": CANARY_KEY, "AUTH_TOKENS": "t" * 20}))
    assert sum("UNPROTECTED" in line for line in logs.lines) == 1
