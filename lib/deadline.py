"""When this invocation will be stopped, so the stream can end cleanly before it is.

In order: the platform's own deadline (Vercel's runtime reads the ``x-vercel-internal-deadline``
header and exposes it through ``vercel_runtime.deadline.get_deadline()``); else the invocation
start plus the function's ``maxDuration`` from ``vercel.json`` or ``MAX_DURATION``; else none.
Times are on the event loop's clock, so tests can reason about them without the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from lib.config import StreamLimits

PlatformDeadline = Callable[[], datetime | None]


def _no_platform() -> datetime | None:
    return None


def _platform_source() -> PlatformDeadline:
    try:
        from vercel_runtime.deadline import get_deadline  # type: ignore[import-untyped]
    except ImportError:  # not on Vercel's runtime (uvicorn elsewhere, tests)
        return _no_platform
    source: PlatformDeadline = get_deadline
    return source


platform_deadline: PlatformDeadline = _platform_source()


def invocation_deadline(
    limits: StreamLimits,
    started: float,
    now: float,
    *,
    platform: PlatformDeadline | None = None,
    wall: Callable[[], float] = time.time,
) -> float | None:
    """The deadline on the clock that gave ``started`` and ``now`` (loop time), or None."""
    value = (platform or platform_deadline)()
    if value is not None:
        return now + (value.timestamp() - wall())
    if limits.max_duration is not None:
        return started + limits.max_duration
    return None
