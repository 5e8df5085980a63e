"""When and how long to wait before asking the upstream again, and the loop that does it.

The rule the trusted proxies share (Envoy's retry policy, Go's ReverseProxy, nginx's
``proxy_next_upstream``): a request may be sent again only while none of its response has gone
out. Here that means before the relay sends the headers; after that a failure ends the stream
in-band and is never retried. What to retry follows the ``openai`` SDK (``_should_retry``):
failures to connect (refused, reset before any answer), 408, 409, 429 and 5xx; an explicit
``x-should-retry`` header wins; 400, 401, 403 and 404 never. How long to wait also follows it:
``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date), else exponential backoff
with jitter (``base * 2**n`` capped at ``max_delay``, minus up to 25 %). No wait ever runs past
the invocation's cut-off.

Two deviations, both because a person is watching a spinner: an upstream that timed out (no
connection within the connect limit, no answer within the first-byte limit) is not asked again,
the next fallback is; and a ``Retry-After`` longer than ``max_delay`` is not waited out, that
upstream gives up at once and its 429/503 (with the header) goes to the caller or the next
fallback.

The policy is pure functions; :func:`open_with_retries` takes the clock, sleep and random source
as parameters so tests drive it without sleeping. Cancellation (the caller hanging up) interrupts
the sleep like any other await, so a retry never starts after the caller has gone.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from lib.errors import APIError, RequestError, UpstreamError, UpstreamTimeout, redacted_repr

RETRY_STATUSES = frozenset({408, 409, 429})
NEVER_RETRY = frozenset({400, 401, 403, 404})


class RetryPolicy(NamedTuple):
    """``max_retries`` extra attempts per upstream; waits between ``base_delay`` and
    ``max_delay`` seconds."""

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 8.0


def should_retry(error: APIError) -> bool:
    """True for a transient provider failure before the stream started."""
    if not isinstance(error, UpstreamError):
        return False
    if isinstance(error, UpstreamTimeout):
        # The upstream already had its whole connect or first-byte limit: asking it again would
        # spend the caller's patience (and the deadline) twice. The next upstream is asked.
        return False
    verdict = error.retry_headers.get("x-should-retry", "").strip().lower()
    if verdict in ("true", "false"):
        return verdict == "true"
    status = error.upstream_status
    if status is None:
        return error.connect_failure
    if status in NEVER_RETRY:
        return False
    return status in RETRY_STATUSES or status >= 500


def retry_after(headers: Mapping[str, str], wall: float) -> float | None:
    """The wait the upstream asked for, in seconds (``wall`` is ``time.time()`` now), or None."""
    raw_ms = headers.get("retry-after-ms", "").strip()
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = -1.0
        if 0 <= value < 1e9:
            return value
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - wall)
    return seconds if 0 <= seconds < 1e9 else None


def backoff(policy: RetryPolicy, retry: int, rng: Callable[[], float]) -> float:
    """Exponential backoff for the ``retry``-th retry (0-based), jittered down by up to 25 %."""
    delay = min(policy.base_delay * 2.0**retry, policy.max_delay)
    return delay * (1 - 0.25 * rng())


def next_delay(
    policy: RetryPolicy,
    error: APIError,
    retry: int,
    *,
    wall: float,
    rng: Callable[[], float],
) -> float | None:
    """How long to wait before retry number ``retry`` (0-based) after ``error``; None: do not
    retry (not transient, attempts spent, or the upstream asked for a wait longer than
    ``max_delay``)."""
    if retry >= policy.max_retries or not isinstance(error, UpstreamError):
        return None
    if not should_retry(error):
        return None
    asked = retry_after(error.retry_headers, wall)
    if asked is None:
        return backoff(policy, retry, rng)
    return asked if asked <= policy.max_delay else None


class Target(NamedTuple):
    """One upstream to try: the primary or a fallback. ``name`` goes to the log; the key never."""

    name: str
    base_url: str
    api_key: str
    model: str | None = None

    def __repr__(self) -> str:
        return redacted_repr(self)


async def open_with_retries[T](
    targets: Sequence[Target],
    attempt: Callable[[Target], Awaitable[T]],
    policy: RetryPolicy,
    *,
    cut_at: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    wall: Callable[[], float] = time.time,
    on_attempt: Callable[[Target], None] = lambda target: None,
) -> tuple[T, Target]:
    """The first successful ``attempt``: each target in order, each with its own retries.

    Moves to the next target on a provider failure (``UpstreamError``), never on the caller's
    mistake (``RequestError``, e.g. a 400: another provider would refuse it too). Raises the last
    error when every target failed. ``cut_at`` is on ``clock``'s scale.
    """
    if not targets:
        raise ValueError("no upstream to try")
    last: APIError | None = None
    for target in targets:
        retry = 0
        while True:
            on_attempt(target)
            try:
                return await attempt(target), target
            except RequestError:
                raise
            except APIError as error:
                last = error
            delay = next_delay(policy, last, retry, wall=wall(), rng=rng)
            if delay is None or (cut_at is not None and clock() + delay >= cut_at):
                break
            await sleep(delay)
            retry += 1
        if not isinstance(last, UpstreamError):
            break
    assert last is not None
    raise last
