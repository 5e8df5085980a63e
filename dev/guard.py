"""uvicorn's h11 protocol with the two limits uvicorn does not have: a header read timeout and a
bound on open connections. Used by ``python -m dev.serve`` and by the serving recipe in
docs/platform.md (``uvicorn api.generate:app --http dev.guard:GuardedH11Protocol``).

uvicorn times out only the idle gap *between* requests (``timeout_keep_alive``), and any byte
restarts that timer, so a connection that never completes its request headers, or trickles one
byte at a time, stays open for good; about 20,000 of them (5 KB each) exhaust the file
descriptors and real requests fail. Here:

- the request line and headers must arrive within ``header_timeout`` seconds of the connection
  opening, or of the first byte of the next request on a kept-alive connection, else the
  connection is closed;
- past ``max_connections`` open connections, a new one gets ``503`` with ``Connection: close``
  at once, before it can cost anything more.

The body is the application's business: the function reads it with ``BODY_READ_TIMEOUT`` and
answers ``Connection: close`` whenever it has not read it all, so nothing is drained.
The defaults can be set for the command line with ``HEADER_READ_TIMEOUT`` and
``SERVER_MAX_CONNECTIONS``; :func:`guarded` builds a class with other values.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 25\r\n\r\nToo many open connections"
)


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` plus a header read timeout and a cap on open connections."""

    header_timeout: float = float(os.environ.get("HEADER_READ_TIMEOUT", DEFAULT_HEADER_TIMEOUT))
    max_connections: int = int(os.environ.get("SERVER_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS))

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(BUSY)
            transport.close()
            return
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Time the headers while h11 waits for them (state IDLE), from their first byte on a
        kept-alive connection (uvicorn's own keep-alive timer covers the silence before)."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_header_timer()
        elif self._header_timer is None and self._fresh_or_started():
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _fresh_or_started(self) -> bool:
        """A new connection, or one where the next request has begun to arrive."""
        return self.cycle is None or bool(self.conn.trailing_data[0])

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def guarded(header_timeout: float, max_connections: int) -> type[GuardedH11Protocol]:
    """A protocol class with these limits (uvicorn takes a class, not an instance)."""
    attributes: dict[str, Any] = {
        "header_timeout": header_timeout,
        "max_connections": max_connections,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attributes)
