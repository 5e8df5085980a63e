"""Small ASGI helpers, and the one owner of ``receive()``.

:class:`Exchange` wraps one HTTP request/response. It reads the body with a hard cap, knows
whether the response has started, writes JSON errors, and, once the body is read, watches
``receive()`` for ``http.disconnect`` and turns it into cancellation of the request's task, in
every phase (waiting for upstream headers, before the first token, mid-stream). Nothing else
calls ``receive()``: polling ``is_disconnected()`` from elsewhere races the server's own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any

from lib.errors import APIError, BodyTooLarge, UnsupportedMediaType

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]


class ClientDisconnected(Exception):
    """Raised when the caller went away before its body was read."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case), decoded as Latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


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

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.started = False
        self.status = 0
        self.bytes_sent = 0
        self.disconnected = False
        self._watcher: asyncio.Task[None] | None = None

    async def read_body(self, limit: int) -> bytes:
        """The whole body, or ``BodyTooLarge`` the moment it passes ``limit`` (the rest is
        never read: the server closes the connection after our answer)."""
        declared = header(self.scope, b"content-length")
        size_text = (declared or "").strip()
        if size_text.isascii() and size_text.isdigit() and int(size_text) > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    # -- disconnect watching -------------------------------------------------------------------

    async def __aenter__(self) -> Exchange:
        """Start watching for ``http.disconnect`` (call after the body has been read)."""
        task = asyncio.current_task()
        assert task is not None
        self._watcher = asyncio.create_task(self._watch(task))
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
        if self.disconnected and exc_type is asyncio.CancelledError:
            task = asyncio.current_task()
            # Our own cancellation: absorb it. Anyone else's cancellation still propagates.
            return task is not None and task.uncancel() == 0
        return False

    async def _watch(self, target: asyncio.Task[Any]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                target.cancel()
                return

    # -- responses ------------------------------------------------------------------------------

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
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
