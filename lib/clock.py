"""One stream's clock: every time limit a stream has, and which of them expires next.

A stream ends at the first of: the invocation deadline minus its margin (``cut_at``), the
longest a stream may last (``MAX_STREAM_SECONDS``, from the first byte sent), or an upstream
silent for ``IDLE_TIMEOUT``; while the upstream is silent a keep-alive is due every
``KEEPALIVE_INTERVAL``; and a write to the caller may wait ``WRITE_TIMEOUT`` at most (the
watchdog in ``lib/asgi.py`` asks :meth:`StreamClock.write_check`). The clock holds no timers and
reads no time: every method is given ``now`` (loop time), so it is tested without sleeping.
"""

from __future__ import annotations

from lib.errors import APIError, DeadlineExceeded, StreamTooLong, UpstreamTimeout


class StreamClock:
    """The time limits of one stream, on the event loop's clock."""

    __slots__ = (
        "cut_at",
        "first_data",
        "first_write",
        "idle",
        "keepalive",
        "last_data",
        "last_write",
        "longest",
        "started",
        "too_long_at",
        "write_stall",
        "writing_since",
    )

    def __init__(
        self,
        *,
        started: float,
        cut_at: float | None,
        idle: float,
        keepalive: float,
        longest: float | None,
        write_stall: float,
    ) -> None:
        self.started = started  # when the request arrived (the log's times count from it)
        self.cut_at = cut_at  # the invocation deadline minus its margin
        self.idle = idle
        self.keepalive = keepalive
        self.longest = longest
        self.write_stall = write_stall
        self.last_data = self.last_write = started
        self.too_long_at: float | None = None
        # when the first upstream byte came and the first event went out (the log line's)
        self.first_data: float | None = None
        self.first_write: float | None = None
        # When the write to the caller in progress began (None: none is); the relay notes it.
        self.writing_since: float | None = None

    def begin(self, now: float) -> None:
        """The stream starts: its own limit and its timers count from ``now``."""
        self.last_data = self.last_write = now
        self.too_long_at = None if self.longest is None else now + self.longest

    def ends_at(self) -> float | None:
        """The stream's hard end (deadline cut or maximum stream time), if any."""
        cut, too_long = self.cut_at, self.too_long_at
        if cut is None:
            return too_long
        return cut if too_long is None else min(cut, too_long)

    def wake(self) -> float:
        """When the next limit or keep-alive falls due (the pump asks before every read: no
        ``min()`` calls, no method call)."""
        wake = self.last_data + self.idle
        ping = self.last_write + self.keepalive
        if ping < wake:
            wake = ping
        cut, too_long = self.cut_at, self.too_long_at
        if cut is not None and cut < wake:
            wake = cut
        if too_long is not None and too_long < wake:
            wake = too_long
        return wake

    def data(self, now: float) -> None:
        """The upstream sent something."""
        self.last_data = now

    def wrote(self, now: float) -> None:
        """Something went to the caller (keep-alives included)."""
        self.last_write = now

    def expired(self, now: float) -> APIError | None:
        """The limit that has expired at ``now``, most final first; None: a keep-alive is due."""
        if self.cut_at is not None and now >= self.cut_at:
            return DeadlineExceeded(
                "The response was cut off at the function's time limit; it is incomplete."
            )
        if self.too_long_at is not None and now >= self.too_long_at:
            return StreamTooLong(
                f"The response was cut off after {self.longest:g} s, the "
                "longest a stream may last here; it is incomplete."
            )
        if now >= self.last_data + self.idle:
            return UpstreamTimeout(
                f"The upstream sent nothing for {self.idle:g} s; the response is incomplete."
            )
        return None

    def write_check(self, now: float) -> float | None:
        """For the write watchdog: None when the write in progress (waiting since
        ``writing_since``) has stalled, or is still waiting at the stream's end; else when to
        look again."""
        writing_since = self.writing_since
        stall, until = self.write_stall, self.ends_at()
        if writing_since is not None and (
            now - writing_since >= stall or (until is not None and now >= until)
        ):
            return None
        wake = (
            now + stall / 4
            if writing_since is None
            else min(writing_since + stall, now + stall / 4)
        )
        if until is not None and now < until:
            wake = min(wake, until)
        return wake

    def ms(self, at: float | None) -> float | None:
        """Milliseconds from the request's arrival to ``at``, for the log line."""
        return None if at is None else round((at - self.started) * 1000, 2)
