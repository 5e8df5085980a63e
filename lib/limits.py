"""Spend limits: requests per window, concurrent streams, and token budgets, per client.

The caller's *content* limits (model allowlist, ``max_tokens`` cap, prompt and message caps)
are enforced in one place, ``lib/request.parse_request``, and the body cap in
``Exchange.read_body``; both read :class:`lib.config.Settings`. This module adds what bounds
*spend*, counted in a :mod:`lib.store` shared by every instance when ``REDIS_URL`` is set:

1. ``RATE_LIMIT``: a fixed-window request counter per client (``count`` per ``period``).
2. ``MAX_CONCURRENT_STREAMS`` per client and ``GLOBAL_MAX_CONCURRENT_STREAMS`` for all: leases
   taken before the upstream call, renewed every third of ``STREAM_LEASE_SECONDS`` while the
   stream lives (:meth:`Limiter.holding`), and released in a ``finally`` (errors and hang-ups
   included). A release the store did not confirm is retried in the background until the lease
   would have expired anyway, so a crashed instance's lease blocks nobody for long. An
   ``acquire`` that timed out may still be applied by the store later: its lease is
   *abandoned* (released behind a tombstone that makes the late acquire a no-op).
3. ``TOKEN_BUDGET``: before calling upstream, reserve ``max_tokens`` plus an upper bound of the
   prompt's tokens (its UTF-8 bytes, :func:`estimate_prompt_tokens`); check and add are one
   atomic step, so N concurrent requests cannot overspend. Afterwards settle to the usage the
   upstream reported, or, when the stream was cut before the usage chunk, to the same prompt
   bound plus one token per relayed event (OpenAI sends about one token per event; the bound's
   surplus over the real prompt covers the few tokens in flight when the caller hung up); the
   whole reservation when the caller stopped reading (the upstream may have gone on
   generating into the buffers); nothing when the upstream never accepted the request.

When the store does not answer within ``STORE_TIMEOUT``: budgets fail *closed* (503, since
spending without a ledger is what the budget exists to prevent); rate and stream limits fall
back to this instance's own memory, so they still hold per instance instead of vanishing, and
a warning is logged. Over a limit: 429 with ``Retry-After`` and the IETF ``RateLimit-Policy`` and
``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers-11, Structured Fields syntax), plus
``x-should-retry: false`` when waiting a few seconds cannot help (budget spent, or a window
that resets in more than a minute), so SDKs do not triple the load with retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from lib.asgi import Header, Scope, joined_header
from lib.config import Protection
from lib.errors import BudgetExhausted, RateLimited, StoreUnavailable
from lib.log import warn
from lib.request import GenerateRequest, image_token_allowance
from lib.store import MemoryStore, RedisStore, Store, StoreError

_NO_LEASE: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()

DEFAULT_LONGEST_STREAM = 900.0  # when no maxDuration is known: how late a settle may land
LEASE_MARGIN = 60.0
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 2.0
NO_RETRY_AFTER = 60  # the openai SDKs only wait out a Retry-After of up to 60 s
STORE_RETRY_AFTER = 5
TOKENS_PER_MESSAGE = 4  # OpenAI's chat format: 3 or 4 per message, plus 3 to prime the reply
REPLY_PRIMING = 3
DEFAULT_IPV6_PREFIX = 56


def client_key(
    scope: Scope,
    trusted_header: str | None,
    client_id: str | None,
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
) -> str:
    """The identity limits count against: the token's client id, else the caller's address.

    The address comes from ``trusted_header`` when set (on Vercel, ``x-vercel-forwarded-for``,
    which the edge overwrites), taking its right-most entry, the one the nearest trusted proxy
    wrote; a left-most ``X-Forwarded-For`` entry is whatever the caller typed. Repeated lines of
    the header are joined first, so a proxy that adds its own line is still the right-most. An
    entry that is not an address counts as one shared ``ip:unknown``, never as the peer: a
    caller must not be able to choose between two identities. Without a trusted header it is
    the socket's peer address. IPv6 addresses count per ``ipv6_prefix`` (``IPV6_PREFIX``, /56 by
    default: the block a home or small-office subscriber is typically given), so a caller cannot
    rotate through the addresses of its own allocation to escape a limit.
    """
    if client_id is not None:
        return client_id
    raw = ""
    value = None if trusted_header is None else joined_header(scope, trusted_header.encode())
    if value is not None:
        raw = value.rsplit(",", 1)[-1].strip()
    else:
        peer = scope.get("client")
        raw = str(peer[0]) if peer else ""
    try:
        address = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        return "ip:unknown"
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return f"ip:{mapped}"
    if address.version == 6:
        return f"ip:{ipaddress.ip_network(f'{address}/{ipv6_prefix}', strict=False)}"
    return f"ip:{address}"


def estimate_prompt_tokens(request: GenerateRequest) -> int:
    """An upper bound on the prompt's tokens, without a tokenizer: its UTF-8 bytes, plus the
    chat format's tokens per message, the reply's priming, and an allowance per image.

    Byte-level BPE tokenizers (OpenAI's cl100k and o200k, and the Llama 3, Qwen and Mistral
    families) never make a token of less than one byte, so no script or language can exceed it.
    Characters / 4 undercounted CJK text about 4x (a burst spent 3.8x the budget). The cost is
    a larger reservation for Latin text (about 4 bytes a token), settled to the reported usage.
    """
    size = len(request.prompt.encode("utf-8")) if request.prompt is not None else 0
    size += request.message_bytes
    return (
        size
        + TOKENS_PER_MESSAGE * max(1, len(request.messages))
        + REPLY_PRIMING
        + image_token_allowance(request)
    )


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


class Admission:
    """What one admitted request holds until it ends (a plain class: see ``lib/log.RequestLog``)."""

    __slots__ = (
        "budget_key", "budget_ttl", "client", "headers", "lease", "lease_keys", "lease_store",
        "max_tokens", "prompt_estimate", "reserved",
    )  # fmt: skip

    def __init__(self, client: str, headers: tuple[Header, ...] = ()) -> None:
        self.client = client
        self.headers = headers  # a tuple: no limits, no object per stream
        self.lease: str | None = None
        self.lease_keys: list[str] = []
        self.lease_store: Store | None = None
        self.budget_key: str | None = None
        self.budget_ttl = 0.0
        self.reserved = 0
        self.prompt_estimate = 0
        self.max_tokens = 0


class Limiter:
    """Built once per process from the settings; ``admit`` before upstream, ``finish`` after."""

    def __init__(
        self,
        protection: Protection,
        *,
        max_duration: float | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.protection = protection
        self.clock = clock
        if store is None:
            url = protection.redis_url
            store = (
                MemoryStore()
                if url is None
                else RedisStore(
                    url,
                    timeout=protection.store_timeout,
                    max_connections=protection.store_max_connections,
                )
            )
        self.store: Store = store
        self._local = MemoryStore()  # rate/stream limits while the shared store is unreachable
        self.lease_ttl = protection.stream_lease_seconds
        self._longest = (max_duration or DEFAULT_LONGEST_STREAM) + LEASE_MARGIN
        self._sleep = sleep
        self._policy = self._policy_header()
        self._warned_at: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _warn(self, kind: str, message: str) -> None:
        """At most one warning of each kind a minute: an outage must not flood the logs."""
        now = self.clock()
        if now - self._warned_at.get(kind, -math.inf) >= 60:
            self._warned_at[kind] = now
            warn(message)

    def _policy_header(self) -> list[Header]:
        p = self.protection
        items = []
        if p.rate_limit is not None:
            items.append(f'"requests";q={p.rate_limit.amount};w={p.rate_limit.period}')
        if p.max_concurrent_streams is not None:
            items.append(f'"streams";q={p.max_concurrent_streams};qu="concurrent-requests"')
        return [(b"ratelimit-policy", ", ".join(items).encode("ascii"))] if items else []

    async def _fallback[T](
        self, operation: Callable[[Store], Awaitable[T]], what: str
    ) -> tuple[T, Store]:
        try:
            return await operation(self.store), self.store
        except StoreError as error:
            self._warn(
                what,
                f"The limit store is unreachable ({error}); {what} falls back to this "
                "instance's memory.",
            )
            return await operation(self._local), self._local

    async def admit(self, client: str, request: GenerateRequest) -> Admission:
        """Count the request and take its stream lease and budget, or raise the 429/503."""
        p = self.protection
        now = self.clock()
        admission = Admission(client=client, headers=tuple(self._policy))
        if p.rate_limit is not None:
            window = p.rate_limit.period
            start = math.floor(now / window) * window
            key = f"rate:{client}:{int(start)}"
            count: int
            count, _ = await self._fallback(
                lambda store: store.count(key, window, now), "the request rate limit"
            )
            reset = _seconds(start + window - now)
            remaining = max(0, p.rate_limit.amount - count)
            status = (b"ratelimit", f'"requests";r={remaining};t={reset}'.encode("ascii"))
            admission.headers += (status,)
            if count > p.rate_limit.amount:
                raise RateLimited(
                    f"Too many requests: the limit is {p.rate_limit.amount} per "
                    f"{p.rate_limit.period} seconds. Try again in {reset} seconds.",
                    headers=self._headers_429(admission.headers, reset, reset > NO_RETRY_AFTER),
                )
        await self._take_lease(admission, now)
        try:
            await self._reserve(admission, request, now)
        except BaseException:
            await self._release(admission)
            raise
        return admission

    async def _take_lease(self, admission: Admission, now: float) -> None:
        p = self.protection
        keys: list[tuple[str, int]] = []
        if p.max_concurrent_streams is not None:
            keys.append((f"streams:{admission.client}", p.max_concurrent_streams))
        if p.global_max_concurrent_streams is not None:
            keys.append(("streams:*", p.global_max_concurrent_streams))
        if not keys:
            return
        lease = uuid.uuid4().hex
        names = [k for k, _ in keys]
        full: int | None
        try:
            full, store = await self.store.acquire(keys, lease, self.lease_ttl, now), self.store
        except StoreError as error:
            # The call may still reach the store and be applied: abandon that lease there.
            self._in_background(
                lambda: self.store.abandon(names, lease, self.lease_ttl), "abandon a stream lease"
            )
            self._warn(
                "the concurrent-stream limit",
                f"The limit store is unreachable ({error}); the concurrent-stream limit falls "
                "back to this instance's memory.",
            )
            full, store = await self._local.acquire(keys, lease, self.lease_ttl, now), self._local
        if full is not None:
            whose = "this client's" if keys[full][0] != "streams:*" else "the service's"
            raise RateLimited(
                f"Too many streams at once: {whose} limit is {keys[full][1]} concurrent "
                "streams. Try again when one has finished.",
                headers=self._headers_429(admission.headers, 1, False),
            )
        admission.lease, admission.lease_keys, admission.lease_store = lease, names, store

    def holding(self, admission: Admission) -> contextlib.AbstractAsyncContextManager[None]:
        """Renew the admission's stream lease every third of its lifetime while the body runs,
        so the lease lives exactly as long as the stream (and no longer, if the instance dies).
        Without a lease, one shared context that does nothing: an open stream then holds no
        suspended generator for it."""
        if admission.lease is None:
            return _NO_LEASE
        return self._renewing(admission)

    @contextlib.asynccontextmanager
    async def _renewing(self, admission: Admission) -> AsyncIterator[None]:
        renewer = asyncio.create_task(self._renew_forever(admission))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew_forever(self, admission: Admission) -> None:
        while True:
            await self._sleep(self.lease_ttl / 3)
            await self.renew(admission)

    async def renew(self, admission: Admission) -> bool:
        """Push the lease's expiry one lifetime ahead; False if the store no longer held it (it
        expired while the store was unreachable) or did not answer."""
        lease, store = admission.lease, admission.lease_store
        if lease is None or store is None:
            return False
        try:
            held = await store.renew(admission.lease_keys, lease, self.lease_ttl, self.clock())
        except StoreError as error:
            self._warn("renew", f"Could not renew a stream lease ({error}); will try again.")
            return False
        if not held:
            self._warn("renew", "A stream lease expired while its stream was still open.")
        return held

    async def _reserve(self, admission: Admission, request: GenerateRequest, now: float) -> None:
        budget = self.protection.token_budget
        if budget is None:
            return
        start = math.floor(now / budget.period) * budget.period
        key = f"budget:{admission.client}:{int(start)}"
        ttl = start + budget.period - now + self._longest  # settles land late
        estimate = estimate_prompt_tokens(request)
        amount = estimate + request.max_tokens
        try:
            used = await self.store.reserve(key, amount, budget.amount, ttl, now)
        except StoreError as error:
            self._warn("budget", f"The limit store is unreachable ({error}); refusing requests.")
            raise StoreUnavailable(
                "The usage ledger is unreachable, so no tokens can be spent right now. "
                "Try again shortly.",
                headers={"Retry-After": str(STORE_RETRY_AFTER)},
            ) from None
        reset = _seconds(start + budget.period - now)
        remaining = max(0, budget.amount - used - (amount if used + amount <= budget.amount else 0))
        admission.headers += (
            (b"x-ratelimit-limit-tokens", str(budget.amount).encode("ascii")),
            (b"x-ratelimit-remaining-tokens", str(remaining).encode("ascii")),
            (b"x-ratelimit-reset-tokens", f"{reset}s".encode("ascii")),
        )
        if used + amount > budget.amount:
            left = max(0, budget.amount - used)
            hint = "" if amount <= budget.amount else " Ask for fewer max_tokens."
            raise BudgetExhausted(
                f"The token budget is spent: this request may use up to {amount} tokens and "
                f"{left} of {budget.amount} are left for the next {reset} seconds.{hint}",
                headers=self._headers_429(admission.headers, reset, True),
            )
        admission.budget_key, admission.budget_ttl = key, ttl
        admission.reserved, admission.prompt_estimate = amount, estimate
        admission.max_tokens = request.max_tokens

    @staticmethod
    def _headers_429(headers: tuple[Header, ...], retry_after: int, final: bool) -> dict[str, str]:
        extra = {k.decode("ascii"): v.decode("ascii") for k, v in headers}
        extra["Retry-After"] = str(retry_after)
        if final:
            extra["x-should-retry"] = "false"
        return extra

    async def finish(
        self,
        admission: Admission,
        *,
        opened: bool,
        usage: dict[str, Any] | None,
        events: int,
        unknown: bool = False,
    ) -> int | None:
        """Release the lease and settle the budget; the tokens charged (None without budget).
        ``unknown``: how much the upstream generated cannot be told (the caller stopped reading
        while the upstream went on), so the whole reservation is charged."""
        await self._release(admission)
        if admission.budget_key is None:
            return None
        total = usage.get("total_tokens") if usage else None
        if not opened:
            charged = 0
        elif isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            charged = total
        elif unknown:
            charged = admission.reserved
        else:
            charged = admission.prompt_estimate + min(admission.max_tokens, events)
        try:
            await self.store.adjust(
                admission.budget_key,
                charged - admission.reserved,
                admission.budget_ttl,
                self.clock(),
            )
        except StoreError as error:
            # The reservation stands: the ledger errs on the side of the owner's money.
            self._warn("settle", f"Could not settle a reservation ({error}); it stays in full.")
        return charged

    async def _release(self, admission: Admission) -> None:
        lease, store, admission.lease = admission.lease, admission.lease_store, None
        if lease is None or store is None:
            return
        keys = admission.lease_keys
        try:
            await store.release(keys, lease)
        except StoreError as error:
            self._warn("release", f"Could not release a stream lease ({error}); retrying.")
            self._in_background(lambda: store.release(keys, lease), "release a stream lease")

    def _in_background(self, operation: Callable[[], Awaitable[None]], what: str) -> None:
        """Retry an idempotent store call with backoff until it succeeds or the lease it is
        about has expired on its own (a lease lives ``lease_ttl`` past its last renewal)."""
        task = asyncio.create_task(self._retry(operation, what))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retry(self, operation: Callable[[], Awaitable[None]], what: str) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.lease_ttl
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                await operation()
                return
            except StoreError as error:
                if loop.time() + delay >= give_up:
                    self._warn(what, f"Could not {what} ({error}); it expires on its own.")
                    return
            await self._sleep(delay)
            delay = min(RETRY_MAX_DELAY, delay * 2)

    async def drain(self) -> None:
        """Wait for the background retries (tests, and shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.store.close()
