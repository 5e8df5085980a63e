"""Where limits are counted: in this process (``MemoryStore``) or in Redis (``RedisStore``).

Three atomic primitives are all the limits need, each one step that cannot interleave with
another instance's:

- ``count``: add one hit to a fixed-window counter that expires with its window;
- ``acquire``/``renew``/``release``: a lease in a bounded set (concurrent streams). Leases carry
  a short expiry that the holder renews while its stream lives, so a lease held by an instance
  that died is dropped after ``ttl`` instead of blocking anyone for long. ``abandon`` settles a
  lease whose ``acquire`` timed out: it may still be applied, so it leaves a tombstone that
  makes a late ``acquire`` of the same lease a no-op (no ghost lease, whatever the order);
- ``reserve``/``adjust``: add to a budget counter only if it stays within the limit (the
  check and the add are one step, so concurrent requests cannot overspend), then settle.

Redis does each in one Lua script (atomic on the server; works on Upstash and Vercel KV, which
speak the protocol and run scripts). Connections come from a bounded pool that *waits* for a
free connection instead of failing when all are busy (redis-py's default pool raises at once,
which turned a burst into spurious 503s and fallbacks). Every Redis call, the wait for a
connection included, has one short timeout and no retries (but one on a fresh connection when
the store closed the pooled one): a store that does not answer in time raises
:class:`StoreError`, and the caller (``lib/limits.py``) applies the documented policy. The
``redis`` package is imported only when ``REDIS_URL`` is set. Times are wall-clock seconds
passed in by the caller, so tests inject the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

KEY_PREFIX = "sfn:"


class StoreError(Exception):
    """Raised when the store cannot be reached or does not answer in time."""


class Store(Protocol):
    """The operations the limits need; every one is atomic."""

    async def count(self, key: str, ttl: float, now: float) -> int:
        """Add one hit to ``key`` (created with ``ttl``); the count after it."""
        ...

    async def acquire(
        self, keys: list[tuple[str, int]], lease: str, ttl: float, now: float
    ) -> int | None:
        """Add ``lease`` to every set if each holds fewer than its limit; else the index of the
        first full one (and nothing is added)."""
        ...

    async def renew(self, keys: list[str], lease: str, ttl: float, now: float) -> bool:
        """Push ``lease``'s expiry to ``now + ttl`` in every set that still holds it (never
        re-adds it: a late renewal must not resurrect a released lease); whether all held it."""
        ...

    async def release(self, keys: list[str], lease: str) -> None: ...

    async def abandon(self, keys: list[str], lease: str, ttl: float) -> None:
        """Release a lease whose ``acquire`` may or may not have been applied, and make any
        later ``acquire`` of it a no-op for ``ttl``."""
        ...

    async def reserve(self, key: str, amount: int, limit: int, ttl: float, now: float) -> int:
        """Add ``amount`` if the total stays within ``limit``; the total before (a total plus
        ``amount`` over ``limit`` means nothing was added)."""
        ...

    async def adjust(self, key: str, delta: int, ttl: float, now: float) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """One process's counters: right for a single instance, and for ``vercel dev``/tests.

    Coroutines here never await, so each operation is atomic on the event loop.
    """

    SWEEP_EVERY = 1024

    def __init__(self) -> None:
        self._counters: dict[str, tuple[int, float]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._ops = 0

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % self.SWEEP_EVERY:
            return
        for key in [k for k, (_, expires) in self._counters.items() if expires <= now]:
            del self._counters[key]
        for key, leases in list(self._leases.items()):
            self._expire(leases, now)
            if not leases:
                del self._leases[key]

    @staticmethod
    def _expire(leases: dict[str, float], now: float) -> None:
        for lease in [lease for lease, expires in leases.items() if expires <= now]:
            del leases[lease]

    def _value(self, key: str, now: float) -> tuple[int, float] | None:
        entry = self._counters.get(key)
        if entry is not None and entry[1] <= now:
            del self._counters[key]
            return None
        return entry

    async def count(self, key: str, ttl: float, now: float) -> int:
        self._sweep(now)
        value, expires = self._value(key, now) or (0, now + ttl)
        self._counters[key] = (value + 1, expires)
        return value + 1

    async def acquire(
        self, keys: list[tuple[str, int]], lease: str, ttl: float, now: float
    ) -> int | None:
        self._sweep(now)
        for index, (key, limit) in enumerate(keys):
            leases = self._leases.setdefault(key, {})
            self._expire(leases, now)
            if len(leases) >= limit:
                return index
        for key, _ in keys:
            self._leases[key][lease] = now + ttl
        return None

    async def renew(self, keys: list[str], lease: str, ttl: float, now: float) -> bool:
        held = True
        for key in keys:
            leases = self._leases.get(key, {})
            if lease in leases:
                leases[lease] = now + ttl
            else:
                held = False
        return held

    async def release(self, keys: list[str], lease: str) -> None:
        for key in keys:
            self._leases.get(key, {}).pop(lease, None)

    async def abandon(self, keys: list[str], lease: str, ttl: float) -> None:
        await self.release(keys, lease)  # nothing here is ever in flight: no tombstone needed

    async def reserve(self, key: str, amount: int, limit: int, ttl: float, now: float) -> int:
        self._sweep(now)
        used, expires = self._value(key, now) or (0, now + ttl)
        if used + amount <= limit:
            self._counters[key] = (used + amount, expires)
        return used

    async def adjust(self, key: str, delta: int, ttl: float, now: float) -> None:
        used, expires = self._value(key, now) or (0, now + ttl)
        self._counters[key] = (max(0, used + delta), expires)

    async def close(self) -> None:
        return None


# KEYS[1]: counter; ARGV[1]: ttl in ms. INCR and the first PEXPIRE in one step, so a counter
# never outlives its window (a crash between two separate commands would leave it forever).
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

# KEYS[1]: the lease's tombstone, then the lease sets; ARGV: lease, now, expiry score, ttl ms,
# then one limit per set. Returns 0 (taken), the 1-based index of the first full set, or -1
# (tombstoned: its caller gave up on this call and abandoned the lease).
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[2])
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then return i - 1 end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[4])
end
return 0
"""

# KEYS: lease sets; ARGV: lease, expiry score, ttl ms. XX: only a lease still held is renewed.
_RENEW = """
local held = 0
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[1]) then
    redis.call('ZADD', key, 'XX', ARGV[2], ARGV[1])
    redis.call('PEXPIRE', key, ARGV[3])
    held = held + 1
  end
end
return held
"""

# KEYS: lease sets; ARGV: lease.
_RELEASE = """
for i, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 0
"""

# KEYS[1]: the lease's tombstone, then the lease sets; ARGV: lease, tombstone ttl ms.
_ABANDON = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 0
"""

# KEYS[1]: budget counter; ARGV: amount, limit, ttl ms. Returns the total before.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) <= tonumber(ARGV[2]) then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
end
return used
"""

# KEYS[1]: budget counter; ARGV: delta, ttl ms. Never below zero.
_ADJUST = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


DEFAULT_MAX_CONNECTIONS = 20


class RedisStore:
    """Counters shared by every instance, in Redis (or Upstash, or Vercel KV)."""

    def __init__(
        self, url: str, *, timeout: float, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._max_connections = max_connections
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> Redis:
        """One client per event loop, created on first use (its connections belong to it)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # Imported here: only deployments with REDIS_URL pay its ~60 ms import.
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as LostConnection

            # Bounded, and waiting for a free connection (up to the store timeout) when all
            # are busy: a burst queues for a few milliseconds instead of failing.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                # One retry, on a fresh connection, when the store closed the pooled one (a
                # restart, a failover, an idle connection the provider dropped). Never after a
                # timeout: that call may have been applied, and the caller's policy decides.
                retry=Retry(NoBackoff(), 1, supported_errors=(LostConnection,)),
                health_check_interval=30,
            )
            self._client = redis.asyncio.Redis.from_pool(pool)  # closing it closes the pool
            self._loop = loop
        return self._client

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import NoScriptError, RedisError

        client = self._redis()
        try:
            async with asyncio.timeout(self._timeout):
                sha = _SHAS.get(script)
                if sha is not None:
                    try:
                        return await client.evalsha(sha, len(keys), *keys, *args)
                    except NoScriptError:
                        pass
                _SHAS[script] = await client.script_load(script)
                return await client.evalsha(_SHAS[script], len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"the Redis store did not answer ({type(exc).__name__})") from None

    async def count(self, key: str, ttl: float, now: float) -> int:
        return int(await self._eval(_COUNT, [KEY_PREFIX + key], [_ms(ttl)]))

    async def acquire(
        self, keys: list[tuple[str, int]], lease: str, ttl: float, now: float
    ) -> int | None:
        names = [_tombstone(lease), *(KEY_PREFIX + key for key, _ in keys)]
        args = [lease, repr(now), repr(now + ttl), _ms(ttl), *(limit for _, limit in keys)]
        full = int(await self._eval(_ACQUIRE, names, args))
        return None if full == 0 else max(0, full - 1)

    async def renew(self, keys: list[str], lease: str, ttl: float, now: float) -> bool:
        names = [KEY_PREFIX + key for key in keys]
        held = int(await self._eval(_RENEW, names, [lease, repr(now + ttl), _ms(ttl)]))
        return held == len(keys)

    async def release(self, keys: list[str], lease: str) -> None:
        await self._eval(_RELEASE, [KEY_PREFIX + key for key in keys], [lease])

    async def abandon(self, keys: list[str], lease: str, ttl: float) -> None:
        names = [_tombstone(lease), *(KEY_PREFIX + key for key in keys)]
        await self._eval(_ABANDON, names, [lease, _ms(ttl)])

    async def reserve(self, key: str, amount: int, limit: int, ttl: float, now: float) -> int:
        return int(await self._eval(_RESERVE, [KEY_PREFIX + key], [amount, limit, _ms(ttl)]))

    async def adjust(self, key: str, delta: int, ttl: float, now: float) -> None:
        await self._eval(_ADJUST, [KEY_PREFIX + key], [delta, _ms(ttl)])

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a link to a dead store is not news
                await client.aclose()


def _tombstone(lease: str) -> str:
    return f"{KEY_PREFIX}abandoned:{lease}"


_SHAS: dict[str, str] = {}
