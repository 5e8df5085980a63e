"""The spend limits against both stores (in-process memory and a real redis-server): the same
contract, atomic under concurrency, with the clock injected so windows pass without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lib.config import Rate, SettingsError, load_protection, load_settings
from lib.errors import BudgetExhausted, RateLimited
from lib.limits import Limiter, client_key, estimate_prompt_tokens
from lib.request import GenerateRequest
from lib.store import MemoryStore, RedisStore, Store

T0 = 20_834 * 86_400.0  # a window boundary for minutes, hours and days


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisStore(url, timeout=1.0)
    yield redis_store
    await redis_store.close()


def prompt(text: str = "hi", max_tokens: int = 100) -> GenerateRequest:
    return GenerateRequest(shape="completion", model="m", max_tokens=max_tokens, prompt=text)


def limiter(store: Store, clock: Clock, **env: str) -> Limiter:
    return Limiter(load_protection(env), store=store, clock=clock)


async def test_requests_per_window_then_429_until_the_next_window(store: Store) -> None:
    clock = Clock(T0 + 10)
    limits = limiter(store, clock, RATE_LIMIT="2/minute")
    for remaining in (1, 0):
        admission = await limits.admit("ip:1.2.3.4", prompt())
        assert (b"ratelimit", f'"requests";r={remaining};t=50'.encode()) in admission.headers
        assert (b"ratelimit-policy", b'"requests";q=2;w=60') in admission.headers
        await limits.finish(admission, opened=True, usage=None, events=0)
    with pytest.raises(RateLimited) as caught:
        await limits.admit("ip:1.2.3.4", prompt())
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "50"
    assert caught.value.headers["ratelimit"] == '"requests";r=0;t=50'
    assert "x-should-retry" not in caught.value.headers  # a retry in 50 s is worth it
    await limits.admit("ip:5.6.7.8", prompt())  # another client has its own count
    clock.now = T0 + 60
    await limits.admit("ip:1.2.3.4", prompt())


async def test_a_long_window_says_do_not_retry(store: Store) -> None:
    limits = limiter(store, Clock(), RATE_LIMIT="1/day")
    await limits.admit("c", prompt())
    with pytest.raises(RateLimited) as caught:
        await limits.admit("c", prompt())
    assert caught.value.headers["x-should-retry"] == "false"
    assert caught.value.headers["Retry-After"] == "86400"


async def test_concurrent_streams_per_client_and_globally_are_leases_released_at_the_end(
    store: Store,
) -> None:
    limits = limiter(store, Clock(), MAX_CONCURRENT_STREAMS="2", GLOBAL_MAX_CONCURRENT_STREAMS="3")
    a1 = await limits.admit("a", prompt())
    await limits.admit("a", prompt())
    with pytest.raises(RateLimited, match="this client's limit is 2"):
        await limits.admit("a", prompt())
    await limits.admit("b", prompt())
    with pytest.raises(RateLimited, match="the service's limit is 3"):
        await limits.admit("c", prompt())
    await limits.finish(a1, opened=True, usage=None, events=0)
    await limits.admit("c", prompt())


async def test_a_dead_instances_lease_expires(store: Store) -> None:
    clock = Clock()
    limits = limiter(store, clock, MAX_CONCURRENT_STREAMS="1")
    await limits.admit("a", prompt())  # never finished: its instance died
    with pytest.raises(RateLimited):
        await limits.admit("a", prompt())
    clock.now += limits.lease_ttl
    await limits.admit("a", prompt())


async def test_budget_reserves_then_settles_to_reported_usage(store: Store) -> None:
    limits = limiter(store, Clock(), TOKEN_BUDGET="1000/day")
    estimate = estimate_prompt_tokens(prompt())
    first = await limits.admit("a", prompt(max_tokens=500))
    assert (b"x-ratelimit-remaining-tokens", str(1000 - 500 - estimate).encode()) in first.headers
    # While the first holds its reservation, a second of the same size does not fit.
    with pytest.raises(BudgetExhausted) as caught:
        await limits.admit("a", prompt(max_tokens=500))
    assert caught.value.headers["x-should-retry"] == "false"
    assert caught.value.type == "insufficient_quota"
    charged = await limits.finish(first, opened=True, usage={"total_tokens": 30}, events=5)
    assert charged == 30
    second = await limits.admit("a", prompt(max_tokens=500))
    assert (b"x-ratelimit-remaining-tokens", str(1000 - 30 - 500 - estimate).encode()) in (
        second.headers
    )


async def test_a_cut_stream_is_charged_an_estimate_and_a_refused_one_nothing(store: Store) -> None:
    limits = limiter(store, Clock(), TOKEN_BUDGET="1000/day")
    estimate = estimate_prompt_tokens(prompt())
    cut = await limits.admit("a", prompt(max_tokens=500))
    assert await limits.finish(cut, opened=True, usage=None, events=7) == estimate + 7
    refused = await limits.admit("a", prompt(max_tokens=500))
    assert await limits.finish(refused, opened=False, usage=None, events=0) == 0
    whole = await limits.admit("a", prompt(max_tokens=1000 - estimate - 7 - estimate))
    remaining = dict(whole.headers)[b"x-ratelimit-remaining-tokens"]
    assert remaining == b"0"


async def test_concurrent_reservations_cannot_overspend(store: Store) -> None:
    limits = limiter(store, Clock(), TOKEN_BUDGET="350/day")  # three of 109 tokens fit
    assert estimate_prompt_tokens(prompt()) + 100 == 109
    results = await asyncio.gather(
        *(limits.admit("a", prompt()) for _ in range(12)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, BudgetExhausted) for r in results if isinstance(r, BaseException))


async def test_a_request_bigger_than_the_whole_budget_says_so(store: Store) -> None:
    limits = limiter(store, Clock(), TOKEN_BUDGET="50/hour")
    with pytest.raises(BudgetExhausted, match="Ask for fewer max_tokens"):
        await limits.admit("a", prompt(max_tokens=100))


def test_rates_parse_like_the_readme_says() -> None:
    assert load_protection({"RATE_LIMIT": "20/minute"}).rate_limit == Rate(20, 60)
    assert load_protection({"TOKEN_BUDGET": "100000/day"}).token_budget == Rate(100_000, 86_400)
    assert load_protection({"RATE_LIMIT": "5 / 10s"}).rate_limit == Rate(5, 10)
    assert load_protection({"RATE_LIMIT": "off"}).rate_limit is None


@pytest.mark.parametrize(
    ("headers", "peer", "trusted", "expected"),
    [
        # Vercel overwrites x-vercel-forwarded-for; a spoofed X-Forwarded-For is ignored.
        ({"x-vercel-forwarded-for": "203.0.113.9", "x-forwarded-for": "6.6.6.6"}, "10.0.0.1",
         "x-vercel-forwarded-for", "ip:203.0.113.9"),
        # Behind a proxy that appends: the right-most entry, never the caller's left-most one.
        ({"x-forwarded-for": "6.6.6.6, 198.51.100.7"}, "10.0.0.1", "x-forwarded-for",
         "ip:198.51.100.7"),
        # No trusted header configured: the socket peer, whatever the headers claim.
        ({"x-forwarded-for": "6.6.6.6"}, "192.0.2.1", None, "ip:192.0.2.1"),
        # IPv6 counts per /56: every /64 of one subscriber's block is one client.
        ({}, "2001:db8:1:2:3:4:5:6", None, "ip:2001:db8:1::/56"),
        ({}, "2001:db8:1:ff:3:4:5:6", None, "ip:2001:db8:1::/56"),
        ({}, "::ffff:192.0.2.1", None, "ip:192.0.2.1"),
        ({"x-vercel-forwarded-for": "not an ip"}, "192.0.2.1", "x-vercel-forwarded-for",
         "ip:unknown"),
    ],
)  # fmt: skip
def test_client_address_comes_only_from_what_is_trusted(
    headers: dict[str, str], peer: str, trusted: str | None, expected: str
) -> None:
    scope = {
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": (peer, 4711),
    }
    assert client_key(scope, trusted, None) == expected
    assert client_key(scope, trusted, "user:42") == "user:42"


def test_repeated_header_lines_are_joined_before_the_right_most_entry_is_taken() -> None:
    # The caller's own line first, the proxy's appended line last: the proxy's entry counts.
    scope = {
        "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")],
        "client": ("10.0.0.1", 4711),
    }
    assert client_key(scope, "x-forwarded-for", None) == "ip:198.51.100.7"
    rotated = {**scope, "headers": [(b"x-forwarded-for", b"7.7.7.7"), *scope["headers"][1:]]}
    assert client_key(rotated, "x-forwarded-for", None) == "ip:198.51.100.7"


def test_the_ipv6_prefix_is_a_setting() -> None:
    assert load_protection({}).ipv6_prefix == 56
    assert load_protection({"IPV6_PREFIX": "48"}).ipv6_prefix == 48
    scope = {"headers": [], "client": ("2001:db8:1:2:3:4:5:6", 1)}
    assert client_key(scope, None, None, 48) == "ip:2001:db8:1::/48"
    assert client_key(scope, None, None, 128) == "ip:2001:db8:1:2:3:4:5:6/128"


def test_vercel_is_detected_for_the_trusted_header() -> None:
    assert load_protection({"VERCEL": "1"}).trust_proxy_header == "x-vercel-forwarded-for"
    blank = {"VERCEL": "1", "TRUST_PROXY_HEADER": " "}  # blank is unset, as for every variable
    assert load_protection(blank).trust_proxy_header == "x-vercel-forwarded-for"
    assert load_protection({}).trust_proxy_header is None
    assert load_protection({"VERCEL": "1", "TRUST_PROXY_HEADER": "none"}).trust_proxy_header is None


def test_the_stream_and_connection_settings_parse_and_name_bad_values() -> None:
    settings = load_settings({})
    assert (settings.stream.write_timeout, settings.request.body_read_timeout) == (30.0, 15.0)
    p = settings.protection
    assert (p.store_max_connections, p.stream_lease_seconds, p.ipv6_prefix) == (20, 30.0, 56)
    env = {
        "CLIENT_WRITE_TIMEOUT": "2.5",
        "BODY_READ_TIMEOUT": "5",
        "STORE_MAX_CONNECTIONS": "50",
        "STREAM_LEASE_SECONDS": "60",
        "IPV6_PREFIX": "64",
    }
    custom = load_settings(env)
    assert (custom.stream.write_timeout, custom.request.body_read_timeout) == (2.5, 5.0)
    q = custom.protection
    assert (q.store_max_connections, q.stream_lease_seconds, q.ipv6_prefix) == (50, 60.0, 64)
    for name, bad in [
        ("CLIENT_WRITE_TIMEOUT", "0"),
        ("BODY_READ_TIMEOUT", "-1"),
        ("STORE_MAX_CONNECTIONS", "0"),
        ("STREAM_LEASE_SECONDS", "1"),
        ("IPV6_PREFIX", "8"),
    ]:
        with pytest.raises(SettingsError, match=name):
            load_settings({name: bad})
