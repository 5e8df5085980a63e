"""The limit store under bursts and stalls, against a real redis-server: a bounded pool that
waits instead of failing, leases renewed while their stream lives, releases that are retried,
and no ghost lease from a call that timed out after Redis applied it. Counts, never timings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from lib.config import load_protection
from lib.errors import RateLimited
from lib.limits import Limiter
from lib.request import GenerateRequest
from lib.store import KEY_PREFIX, MemoryStore, RedisStore, Store
from tests.conftest import Function, LogTap
from tests.redisproc import RedisServer
from tests.streams import post
from tests.test_protection import MakeFunction, freeze, wait_requests

T0 = 20_834 * 86_400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ticks:
    """A ``sleep`` the test drives: each call reports its argument and returns when told to."""

    def __init__(self) -> None:
        self.asked: asyncio.Queue[float] = asyncio.Queue()
        self._go: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.asked.put_nowait(seconds)
        await self._go.get()

    def tick(self) -> None:
        self._go.put_nowait(None)


def prompt(max_tokens: int = 100) -> GenerateRequest:
    return GenerateRequest(shape="completion", model="m", max_tokens=max_tokens, prompt="hi")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    redis_store = RedisStore(request.getfixturevalue("redis_url"), timeout=5.0)
    yield redis_store
    await redis_store.close()


def leases(server: RedisServer) -> int:
    """Stream lease entries held in Redis, expired or not (one per set the lease is in)."""
    keys = server.client.keys(KEY_PREFIX + "streams:*")
    return sum(int(server.client.zcard(key)) for key in keys)


async def test_a_pool_of_four_serves_three_hundred_concurrent_calls(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=5.0, max_connections=4)
    try:
        counts = await asyncio.gather(*(store.count("rate:c", 60, T0) for _ in range(300)))
        taken = await asyncio.gather(
            *(store.acquire([("streams:*", 120)], f"lease{i}", 30, T0) for i in range(300))
        )
        assert sorted(counts) == list(range(1, 301))  # every call answered, none failed
        assert taken.count(None) == 120  # exactly the limit, not one more
    finally:
        await store.close()


async def test_a_renewed_lease_outlives_its_first_expiry_and_stops_when_the_stream_ends(
    store: Store,
) -> None:
    clock, ticks = Clock(), Ticks()
    env = {"MAX_CONCURRENT_STREAMS": "1", "STREAM_LEASE_SECONDS": "30"}
    limits = Limiter(load_protection(env), store=store, clock=clock, sleep=ticks)
    admission = await limits.admit("a", prompt())
    async with limits.holding(admission):
        for _ in range(3):
            assert await ticks.asked.get() == 10.0  # a third of the lease
            clock.now += 25  # each renewal comes before the lease would expire
            ticks.tick()
        await ticks.asked.get()  # the third renewal is done; the loop sleeps again
        assert clock.now == T0 + 75  # long past the first expiry (T0 + 30)
        with pytest.raises(RateLimited):
            await limits.admit("a", prompt())  # still held: the stream is still open
    clock.now += 30  # the stream ended without a release (a crash): no renewal keeps it
    await limits.admit("a", prompt())


async def test_a_late_renewal_never_resurrects_a_released_lease(store: Store) -> None:
    assert await store.acquire([("streams:a", 1)], "l1", 30, T0) is None
    await store.release(["streams:a"], "l1")
    assert await store.renew(["streams:a"], "l1", 30, T0 + 1) is False
    assert await store.acquire([("streams:a", 1)], "l2", 30, T0 + 1) is None


async def test_an_abandoned_lease_is_gone_whichever_call_lands_first(redis_url: str) -> None:
    store = RedisStore(redis_url, timeout=5.0)
    try:
        # Acquire applied first, then abandoned: released.
        assert await store.acquire([("streams:a", 1)], "first", 30, T0) is None
        await store.abandon(["streams:a"], "first", 30)
        # Abandoned first (the acquire was still in flight), then applied: a no-op.
        await store.abandon(["streams:a"], "second", 30)
        assert await store.acquire([("streams:a", 1)], "second", 30, T0) is not None
        assert await store.acquire([("streams:a", 1)], "third", 30, T0) is None  # slot free
    finally:
        await store.close()


async def test_an_acquire_that_times_out_leaves_no_ghost_lease(
    make_redis: Callable[[], RedisServer],
) -> None:
    server = make_redis()
    env = {"MAX_CONCURRENT_STREAMS": "5", "REDIS_URL": server.url, "STORE_TIMEOUT": "0.2"}
    limits = Limiter(load_protection(env), clock=Clock())
    try:
        await limits.finish(await limits.admit("a", prompt()), opened=True, usage=None, events=0)
        server.pause()  # the acquire reaches the socket; Redis applies it only when resumed
        admission = await limits.admit("a", prompt())  # timed out: this instance's memory
        assert admission.lease_store is not limits.store
        server.resume()
        await limits.drain()
        assert leases(server) == 0
    finally:
        server.resume()
        await limits.close()


async def test_a_release_the_store_missed_is_retried(
    make_redis: Callable[[], RedisServer],
) -> None:
    server = make_redis()
    env = {"MAX_CONCURRENT_STREAMS": "5", "REDIS_URL": server.url, "STORE_TIMEOUT": "0.2"}
    limits = Limiter(load_protection(env), clock=Clock())
    try:
        admission = await limits.admit("a", prompt())
        assert admission.lease_store is limits.store
        assert leases(server) == 1
        server.pause()
        await limits.finish(admission, opened=True, usage=None, events=0)
        server.resume()
        await limits.drain()
        assert leases(server) == 0
    finally:
        server.resume()
        await limits.close()


async def test_a_burst_of_300_requests_holds_every_limit_with_no_503_and_no_lease_left(
    make_function: MakeFunction,
    demo: DemoUpstream,
    redis_server: RedisServer,
    redis_url: str,
    logs: LogTap,
) -> None:
    """10 clients x 30 concurrent requests on two instances sharing Redis through small pools.
    Rate: 25 per client, so exactly 5 x 10 are refused by it. Streams: 3 per client and 20 in
    all; the admitted streams stay open until every answer is in, so exactly 20 are admitted
    (fewer would mean every client holds 3, i.e. 30). Budget: never binding, settled exactly."""
    tokens = [f"tok_burst_client_{n:02d}_abcdef" for n in range(10)]
    env = {
        "AUTH_TOKENS": ",".join(tokens),
        "RATE_LIMIT": "25/minute",
        "MAX_CONCURRENT_STREAMS": "3",
        "GLOBAL_MAX_CONCURRENT_STREAMS": "20",
        "TOKEN_BUDGET": "1000000/day",
        "REDIS_URL": redis_url,
        "STORE_MAX_CONNECTIONS": "8",
        "STORE_TIMEOUT": "10",  # the pool waits; a slow shared machine must not turn into 503s
    }
    instances: list[Function] = [await make_function(**env), await make_function(**env)]
    freeze(*instances)
    gate = asyncio.Event()
    demo.push(*(Scenario(gate=gate) for _ in range(20)))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        requests = [
            post(
                http,
                instances[i % 2].url,
                {"prompt": "hi", "max_tokens": 50},
                headers={"Authorization": f"Bearer {tokens[i % 10]}"},
            )
            for i in range(300)
        ]
        responses = await asyncio.gather(*requests)
        statuses = [r.status for r in responses]
        bodies = [await r.json() for r in responses if r.status != 200]
        assert statuses.count(503) == 0
        assert sorted(set(statuses)) == [200, 429]
        assert statuses.count(200) == 20
        assert len(demo.seen) == 20
        messages = [b["error"]["message"] for b in bodies]
        assert sum("Too many requests" in m for m in messages) == 50
        assert sum("Too many streams" in m for m in messages) == 230
        per_client = [
            sum(1 for i, s in enumerate(statuses) if s == 200 and i % 10 == n) for n in range(10)
        ]
        assert max(per_client) <= 3
        assert leases(redis_server) == 20 * 2  # each in its client's set and the global one
        assert redis_server.client.zcard(KEY_PREFIX + "streams:*") == 20
        gate.set()
        for resp in responses:
            await resp.read()
    lines = await wait_requests(logs, 300)  # each written after its lease and budget settled
    for function in instances:
        assert function.handler.limiter is not None
        await function.handler.limiter.drain()
    assert leases(redis_server) == 0
    assert not [k for k in redis_server.stored_keys() if "abandoned" in k]  # nothing timed out
    assert not [line for line in logs.lines if "limit store" in line]  # no fallback, no 503
    charged: dict[str, int] = {}
    for line in lines:
        charged[line["client"]] = charged.get(line["client"], 0) + line.get("tokens_charged", 0)
    day = int(T0 + 10) // 86_400 * 86_400
    for client, total in charged.items():
        assert int(redis_server.client.get(f"{KEY_PREFIX}budget:{client}:{day}") or 0) == total


async def test_after_a_restart_without_persistence_the_store_serves_again_from_zero(
    make_redis: Callable[[], RedisServer], logs: LogTap
) -> None:
    """What docs/protection.md promises for a restart: the very next call works again (on a
    fresh connection, with the scripts loaded anew), and every count, budgets included, starts
    from zero."""
    server = make_redis()
    env = {"TOKEN_BUDGET": "1000/day", "RATE_LIMIT": "1/minute", "REDIS_URL": server.url}
    limits = Limiter(load_protection(env), clock=Clock())
    try:
        first = await limits.admit("a", prompt(max_tokens=500))
        await limits.finish(first, opened=True, usage={"total_tokens": 900}, events=0)
        with pytest.raises(RateLimited):
            await limits.admit("a", prompt(max_tokens=50))
        server.restart()
        again = await limits.admit("a", prompt(max_tokens=500))  # window and budget reset
        remaining = dict(again.headers)[b"x-ratelimit-remaining-tokens"]
        assert int(remaining) == 1000 - 500 - 9
        assert not [line for line in logs.lines if "limit store" in line]  # no fallback
    finally:
        await limits.close()
