"""Small ASGI helpers, and the one owner of ``receive()``.

:class:`Exchange` wraps one HTTP request/response. It reads the body with a hard cap, knows
whether the response has started, writes JSON errors, and, once the body is read, watches
``receive()`` for ``http.disconnect`` and turns it into cancellation of the request's task, in
every phase (waiting for upstream headers, before the first token, mid-stream). Nothing else
calls ``receive()``: polling ``is_disconnected()`` from elsewhere races the server's own loop.

It also bounds every write of a stream (:meth:`Exchange.bound_writes`): the server's ``send()``
waits while the caller's socket is full, so a caller that stops reading would otherwise hold
the stream, its upstream connection and its lease forever. One watchdog timer per stream (not
one per write: most writes never wait) cancels the task when a write has waited longer than the
stall timeout, or is still waiting at the stream's deadline; the exchange then raises
:class:`ClientStalled`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, Protocol

from lib.errors import APIError, BodyTooLarge, RequestTimeout, UnsupportedMediaType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Header = tuple[bytes, bytes]  # one header as ASGI carries it: lower-case name, value
App = Callable[[Scope, Receive, Send], Awaitable[None]]  # an ASGI application
Headers = Iterable[Header]  # the one header type: every module uses these two
CLOSE = (b"connection", b"close")

# The context the relay's timers run their callbacks in: they read no context variable, and
# a timer armed without one copies the caller's context (one object per timer, per stream).
TIMER_CONTEXT = contextvars.Context()


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, as the C function it wraps where there is one: asyncio's own loops read
    ``time.monotonic()`` in a Python method, and the relay reads the clock twice per event (a
    frame each, at real pacing). A loop with a clock of its own (uvloop) keeps it."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


class WriteBound(Protocol):
    """When a write to the caller has waited too long (lib/clock.StreamClock). Whoever writes
    notes when each write began and that it ended (``writing_since``, None between writes)."""

    writing_since: float | None

    def write_check(self, now: float) -> float | None:
        """None: the write in progress has stalled; else when to look again (loop time)."""
        ...


class ClientDisconnected(Exception):
    """Raised when the caller went away before its body was read."""


class ClientStalled(Exception):
    """Raised when a write to the caller waited too long: it stopped reading."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case), decoded as Latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def joined_header(scope: Scope, name: bytes) -> str | None:
    """Every line of a request header joined with ``", "``, as RFC 9110 section 5.3 combines
    repeated field lines (a proxy may append its own line instead of extending the first)."""
    values = [bytes(v).decode("latin-1") for k, v in scope.get("headers", ()) if k == name]
    return ", ".join(values) if values else None


def check_json_content_type(scope: Scope) -> None:
    """Accept ``application/json`` with or without a UTF-8 charset; anything else is a 415."""
    raw = header(scope, b"content-type")
    media_type, _, params = (raw or "").partition(";")
    if media_type.strip().lower() != "application/json":
        shown = f"{raw!r}" if raw else "no Content-Type"
        raise UnsupportedMediaType(
            f"Send the body as JSON with Content-Type: application/json (got {shown})."
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaType("The JSON body must be UTF-8 (charset=utf-8).")


class Exchange:
    """One request and its response, as the handler sees them."""

    __slots__ = (  # one per open stream: no instance dict (issue 15, memory per stream)
        "_body_read",
        "_headers",
        "_receive",
        "_send",
        "_target",
        "_watcher",
        "_write_bound",
        "_write_timer",
        "bytes_sent",
        "disconnected",
        "scope",
        "stalled",
        "started",
        "status",
    )

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, headers: tuple[Header, ...] = ()
    ) -> None:
        """``headers`` go on whichever response this exchange starts (the request id, CORS)."""
        self.scope = scope
        self._headers = headers
        self._receive = receive
        self._send = send
        self.started = False
        self.status = 0
        self.bytes_sent = 0
        self.disconnected = False
        self.stalled = False
        self._body_read = False
        self._watcher: asyncio.Future[Message] | None = None
        self._target: asyncio.Task[Any] | None = None
        self._write_bound: WriteBound | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    async def read_body(self, limit: int, time_limit: float | None = None) -> bytes:
        """The whole body; ``BodyTooLarge`` the moment it passes ``limit``, ``RequestTimeout``
        when it has not all arrived within ``time_limit`` seconds. In both cases the rest is never
        read: the answer says ``Connection: close`` and the server closes the connection."""
        declared = header(self.scope, b"content-length")
        size_text = (declared or "").strip()
        if size_text.isascii() and size_text.isdigit() and int(size_text) > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(time_limit):
                while True:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        self.disconnected = True
                        raise ClientDisconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(
                            f"The request body is larger than the limit of {limit} bytes."
                        )
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        self._body_read = True
                        return b"".join(parts)
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {time_limit:g} seconds."
            ) from None

    def _body_unread(self) -> bool:
        """Whether the caller has sent, or may still send, body bytes no one read: answering
        then must close the connection, or the server would read and discard all of them to
        reach the next request (RFC 9112 section 9.6: the server may close instead)."""
        if self._body_read:
            return False
        length = header(self.scope, b"content-length")
        if length is not None and length.strip() == "0":
            return False
        return length is not None or header(self.scope, b"transfer-encoding") is not None

    # -- disconnect watching -------------------------------------------------------------------

    async def __aenter__(self) -> Exchange:
        """Start watching for ``http.disconnect`` (call after the body has been read)."""
        task = asyncio.current_task()
        assert task is not None
        self._target = task
        self._watch()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()  # not awaited: it holds nothing but a pending receive()
        timer, self._write_timer = self._write_timer, None
        if timer is not None:
            timer.cancel()
        if (self.disconnected or self.stalled) and exc_type is asyncio.CancelledError:
            task = asyncio.current_task()
            # Our own cancellation: absorb it. Anyone else's cancellation still propagates.
            if task is None or task.uncancel() != 0:
                return False
            if self.stalled and not self.disconnected:
                raise ClientStalled from None
            return True
        return False

    def bound_writes(self, bound: WriteBound) -> None:
        """From now on, end the exchange (:class:`ClientStalled`) when ``bound`` says a write
        has waited too long (lib/clock.StreamClock.write_check); the caller notes on ``bound``
        when each write begins and ends. Call inside ``async with exchange``."""
        self._write_bound = bound
        self._check_writes()

    def _check_writes(self) -> None:
        """The watchdog: runs only while the task is suspended, so a write in progress here is
        one that is waiting for the caller's socket to drain."""
        loop = asyncio.get_running_loop()
        assert self._write_bound is not None
        wake = self._write_bound.write_check(loop.time())
        if wake is None:
            self.stalled = True
            if self._target is not None:
                self._target.cancel()
            return
        self._write_timer = loop.call_at(wake, self._check_writes, context=TIMER_CONTEXT)

    def _watch(self) -> None:
        """Wait for the server's next message as a task of its own (no coroutine of ours around
        ``receive()``: one frame less per open stream); :meth:`_heard` reads it."""
        watcher = self._watcher = asyncio.ensure_future(self._receive())
        # In the watcher task's own context, not a copy of it (one object less per open stream;
        # a server whose receive() hands back a plain future gets the default copy).
        context = watcher.get_context() if isinstance(watcher, asyncio.Task) else None
        watcher.add_done_callback(self._heard, context=context)

    def _heard(self, watcher: asyncio.Future[Message]) -> None:
        if watcher is not self._watcher or watcher.cancelled() or watcher.exception() is not None:
            return  # the exchange ended (or the server failed; its own task reports that)
        if watcher.result()["type"] == "http.disconnect":
            self.disconnected = True
            if self._target is not None:
                self._target.cancel()
            return
        self._watch()  # any other message (none is expected once the body is read): wait on

    # -- responses ------------------------------------------------------------------------------

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        headers = [*headers, *self._headers]
        if self._body_unread():
            headers.append(CLOSE)
        message = {"type": "http.response.start", "status": status, "headers": headers}
        await self._send(message)

    def write(self, data: bytes) -> Awaitable[None]:
        """One body write: the server's own awaitable, to await (the stream's hot path, one
        call per relayed read: no coroutine of ours around it)."""
        self.bytes_sent += len(data)
        return self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        """The response's last write. The disconnect watch ends first: the caller then has the
        whole response, and the server reports ``http.disconnect`` as soon as it is complete,
        which would cancel what the request still does after it (the relay reads the upstream
        body's end, to pool its connection)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
        self.bytes_sent += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def respond(self, status: int, body: bytes, headers: Headers = ()) -> None:
        """A complete, non-streamed response."""
        all_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
            *headers,
        ]
        await self.start(status, all_headers)
        await self.end(body)

    async def respond_error(self, error: APIError, headers: Headers = ()) -> None:
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()
        ]
        await self.respond(error.status, error.to_json(), [*headers, *extra])
