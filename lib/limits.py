"""Spend limits: requests per window, concurrent streams, and token budgets, per client.

The caller's *content* limits (model allowlist, ``max_tokens`` cap, prompt and message caps)
are enforced in one place, ``lib/request.parse_request``, and the body cap in
``Exchange.read_body``; both read :class:`lib.config.Settings`. This module adds what bounds
*spend*, counted in a :mod:`lib.store` shared by every instance when ``REDIS_URL`` is set:

1. ``RATE_LIMIT``: a fixed-window request counter per client (``count`` per ``period``).
2. ``MAX_CONCURRENT_STREAMS`` per client and ``GLOBAL_MAX_CONCURRENT_STREAMS`` for all: leases
   taken before the upstream call and released in a ``finally`` (errors and hang-ups included);
   a lease expires after the function's longest possible life, so a crashed instance's
   lease cannot block a client for good.
3. ``TOKEN_BUDGET``: before calling upstream, reserve ``max_tokens`` plus an estimate of the
   prompt (characters / 4); check and add are one atomic step, so N concurrent requests cannot
   overspend. Afterwards settle to the usage the upstream reported, or, when the stream was cut
   before the usage chunk, to the prompt estimate plus one token per relayed event (OpenAI sends
   about one token per event); nothing when the upstream never accepted the request.

When the store does not answer within ``STORE_TIMEOUT``: budgets fail *closed* (503, since
spending without a ledger is what the budget exists to prevent); rate and stream limits fall
back to this instance's own memory, so they still hold per instance instead of vanishing, and
a warning is logged. Over a limit: 429 with ``Retry-After`` and the IETF ``RateLimit-Policy`` and
``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers-11, Structured Fields syntax), plus
``x-should-retry: false`` when waiting a few seconds cannot help (budget spent, or a window
that resets in more than a minute), so SDKs do not triple the load with retries.
"""

from __future__ import annotations

import ipaddress
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lib.asgi import Scope, header
from lib.config import Protection
from lib.errors import BudgetExhausted, RateLimited, StoreUnavailable
from lib.log import warn
from lib.request import GenerateRequest, image_token_allowance
from lib.store import MemoryStore, RedisStore, Store, StoreError

Headers = list[tuple[bytes, bytes]]
DEFAULT_LEASE_TTL = 900.0
LEASE_MARGIN = 60.0
NO_RETRY_AFTER = 60  # the openai SDKs only wait out a Retry-After of up to 60 s
STORE_RETRY_AFTER = 5
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def client_key(scope: Scope, trusted_header: str | None, client_id: str | None) -> str:
    """The identity limits count against: the token's client id, else the caller's address.

    The address comes from ``trusted_header`` when set (on Vercel, ``x-vercel-forwarded-for``,
    which the edge overwrites), taking its right-most entry, the one the nearest trusted proxy
    wrote; a left-most ``X-Forwarded-For`` entry is whatever the caller typed. Without a trusted
    header it is the socket's peer address. IPv6 addresses count per /64, the block one
    subscriber gets, so a caller cannot rotate through addresses to escape the limit.
    """
    if client_id is not None:
        return client_id
    raw: str | None = None
    if trusted_header is not None:
        value = header(scope, trusted_header.encode("latin-1"))
        if value:
            raw = value.rsplit(",", 1)[-1].strip()
    if not raw:
        peer = scope.get("client")
        raw = str(peer[0]) if peer else ""
    try:
        address = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        return "ip:unknown"
    if address.version == 6 and getattr(address, "ipv4_mapped", None) is None:
        return f"ip:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    mapped = getattr(address, "ipv4_mapped", None)
    return f"ip:{mapped or address}"


def estimate_prompt_tokens(request: GenerateRequest) -> int:
    """A cheap upper-ish estimate of the prompt's tokens (no tokenizer on the platform)."""
    chars = len(request.prompt) if request.prompt is not None else 0
    chars += request.message_chars
    return (
        math.ceil(chars / CHARS_PER_TOKEN)
        + TOKENS_PER_MESSAGE * max(1, len(request.messages))
        + image_token_allowance(request)
    )


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


@dataclass(slots=True)
class Admission:
    """What one admitted request holds until it ends."""

    client: str
    headers: Headers = field(default_factory=list)
    lease: str | None = None
    lease_keys: list[str] = field(default_factory=list)
    lease_store: Store | None = None
    budget_key: str | None = None
    budget_ttl: float = 0.0
    reserved: int = 0
    prompt_estimate: int = 0
    max_tokens: int = 0


class Limiter:
    """Built once per process from the settings; ``admit`` before upstream, ``finish`` after."""

    def __init__(
        self,
        protection: Protection,
        *,
        max_duration: float | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.protection = protection
        self.clock = clock
        if store is None:
            url = protection.redis_url
            store = (
                MemoryStore() if url is None else RedisStore(url, timeout=protection.store_timeout)
            )
        self.store: Store = store
        self._local = MemoryStore()  # rate/stream limits while the shared store is unreachable
        self.lease_ttl = (max_duration or DEFAULT_LEASE_TTL) + LEASE_MARGIN
        self._policy = self._policy_header()
        self._warned_at: dict[str, float] = {}

    def _warn(self, kind: str, message: str) -> None:
        """At most one warning of each kind a minute: an outage must not flood the logs."""
        now = self.clock()
        if now - self._warned_at.get(kind, -math.inf) >= 60:
            self._warned_at[kind] = now
            warn(message)

    @property
    def enabled(self) -> bool:
        p = self.protection
        return bool(
            p.rate_limit
            or p.max_concurrent_streams
            or p.global_max_concurrent_streams
            or p.token_budget
        )

    def _policy_header(self) -> Headers:
        p = self.protection
        items = []
        if p.rate_limit is not None:
            items.append(f'"requests";q={p.rate_limit.count};w={p.rate_limit.period}')
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
        admission = Admission(client=client, headers=list(self._policy))
        if p.rate_limit is not None:
            window = p.rate_limit.period
            start = math.floor(now / window) * window
            key = f"rate:{client}:{int(start)}"
            count: int
            count, _ = await self._fallback(
                lambda store: store.count(key, window, now), "the request rate limit"
            )
            reset = _seconds(start + window - now)
            remaining = max(0, p.rate_limit.count - count)
            status = (b"ratelimit", f'"requests";r={remaining};t={reset}'.encode("ascii"))
            admission.headers.append(status)
            if count > p.rate_limit.count:
                raise RateLimited(
                    f"Too many requests: the limit is {p.rate_limit.count} per "
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
        full: int | None
        full, store = await self._fallback(
            lambda s: s.acquire(keys, lease, self.lease_ttl, now), "the concurrent-stream limit"
        )
        if full is not None:
            whose = "this client's" if keys[full][0] != "streams:*" else "the service's"
            raise RateLimited(
                f"Too many streams at once: {whose} limit is {keys[full][1]} concurrent "
                "streams. Try again when one has finished.",
                headers=self._headers_429(admission.headers, 1, False),
            )
        admission.lease, admission.lease_keys, admission.lease_store = (
            lease,
            [k for k, _ in keys],
            store,
        )

    async def _reserve(self, admission: Admission, request: GenerateRequest, now: float) -> None:
        budget = self.protection.token_budget
        if budget is None:
            return
        start = math.floor(now / budget.period) * budget.period
        key = f"budget:{admission.client}:{int(start)}"
        ttl = start + budget.period - now + LEASE_MARGIN + self.lease_ttl  # settles land late
        estimate = estimate_prompt_tokens(request)
        amount = estimate + request.max_tokens
        try:
            used = await self.store.reserve(key, amount, budget.count, ttl, now)
        except StoreError as error:
            self._warn("budget", f"The limit store is unreachable ({error}); refusing requests.")
            raise StoreUnavailable(
                "The usage ledger is unreachable, so no tokens can be spent right now. "
                "Try again shortly.",
                headers={"Retry-After": str(STORE_RETRY_AFTER)},
            ) from None
        reset = _seconds(start + budget.period - now)
        remaining = max(0, budget.count - used - (amount if used + amount <= budget.count else 0))
        admission.headers += [
            (b"x-ratelimit-limit-tokens", str(budget.count).encode("ascii")),
            (b"x-ratelimit-remaining-tokens", str(remaining).encode("ascii")),
            (b"x-ratelimit-reset-tokens", f"{reset}s".encode("ascii")),
        ]
        if used + amount > budget.count:
            left = max(0, budget.count - used)
            hint = "" if amount <= budget.count else " Ask for fewer max_tokens."
            raise BudgetExhausted(
                f"The token budget is spent: this request may use up to {amount} tokens and "
                f"{left} of {budget.count} are left for the next {reset} seconds.{hint}",
                headers=self._headers_429(admission.headers, reset, True),
            )
        admission.budget_key, admission.budget_ttl = key, ttl
        admission.reserved, admission.prompt_estimate = amount, estimate
        admission.max_tokens = request.max_tokens

    @staticmethod
    def _headers_429(headers: Headers, retry_after: int, final: bool) -> dict[str, str]:
        extra = {k.decode("ascii"): v.decode("ascii") for k, v in headers}
        extra["Retry-After"] = str(retry_after)
        if final:
            extra["x-should-retry"] = "false"
        return extra

    async def finish(
        self, admission: Admission, *, opened: bool, usage: dict[str, Any] | None, events: int
    ) -> int | None:
        """Release the lease and settle the budget; the tokens charged (None without budget)."""
        await self._release(admission)
        if admission.budget_key is None:
            return None
        total = usage.get("total_tokens") if usage else None
        if not opened:
            charged = 0
        elif isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            charged = total
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
        try:
            await store.release(admission.lease_keys, lease)
        except StoreError as error:
            self._warn("release", f"Could not release a stream lease ({error}); it will expire.")

    async def close(self) -> None:
        await self.store.close()
