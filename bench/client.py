"""The bench's HTTP client: many streaming POSTs at once, timed per event, at little CPU cost.

A raw ``asyncio.Protocol`` (no aiohttp, no line reader) speaks just enough HTTP/1.1: it sends
one request per connection, reads the status line and headers, decodes a chunked (or
length-delimited) body, and stamps the moment the headers arrived, the first event completed,
and every later event completed. An SSE event is counted at each ``\\n\\n`` in the body; a
``text/plain`` body counts each non-empty chunk as one event. The client stays cheap so that at
1,000 streams it is not the bottleneck it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

_CRLF = b"\r\n"


@dataclass(slots=True)
class StreamResult:
    """What one stream looked like from the caller's side (times in seconds, monotonic)."""

    sent_at: float = 0.0
    status: int = 0
    first_byte_at: float | None = None
    first_event_at: float | None = None
    event_times: list[float] = field(default_factory=list)
    complete: bool = False  # the body ended cleanly (terminal chunk or full length)
    done: bool = False  # an SSE body ended with `data: [DONE]`
    error: str | None = None
    tail: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.complete

    def gaps(self) -> list[float]:
        times = self.event_times
        return [b - a for a, b in itertools.pairwise(times)]


class _StreamProtocol(asyncio.Protocol):
    """One request, one response, then the connection closes."""

    def __init__(
        self,
        request: bytes,
        result: StreamResult,
        finished: asyncio.Future[None],
        first_only: bool = False,
    ) -> None:
        self._request = request
        self._first_only = first_only
        self._result = result
        self._finished = finished
        self._head = b""
        self._in_body = False
        self._sse = True
        self._chunked = True
        self._remaining = -1  # bytes left of the current chunk (or of a length-delimited body)
        self._buf = b""
        self._last = b""  # the last body byte seen, to find a `\n\n` split across reads
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        transport = self._transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        result = self._result
        if result.first_byte_at is None:
            result.first_byte_at = now
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(self._head[:end])
            data = self._head[end + 4 :]
            self._head = b""
            self._in_body = True
        if self._chunked:
            self._dechunk(data, now)
        else:
            self._body(data, now)
            self._remaining -= len(data)
            if self._remaining <= 0:
                self._finish()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(_CRLF)
        parts = lines[0].split(b" ", 2)
        self._result.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self._chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            self._result.headers[name] = value
            if name == b"transfer-encoding" and b"chunked" in value:
                self._chunked = True
            elif name == b"content-length":
                self._remaining = int(value)
            elif name == b"content-type":
                self._sse = value.startswith(b"text/event-stream")
        if not self._chunked and self._remaining == 0:
            self._finish()

    def _dechunk(self, data: bytes, now: float) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        size = len(buf)
        while pos < size:
            if self._remaining < 0:  # expecting a chunk-size line
                end = buf.find(_CRLF, pos)
                if end < 0:
                    break
                length = int(buf[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if length == 0:
                    self._finish()
                    return
                self._remaining = length
            take = min(self._remaining, size - pos)
            if take:
                self._body(buf[pos : pos + take], now)
                pos += take
                self._remaining -= take
            if self._remaining == 0:
                if size - pos < 2:
                    break  # wait for the CRLF that ends the chunk
                pos += 2
                self._remaining = -1
        self._buf = buf[pos:]

    def _body(self, piece: bytes, now: float) -> None:
        result = self._result
        if self._sse:
            count = piece.count(b"\n\n")
            if self._last == b"\n" and piece[:1] == b"\n":
                count += 1
            self._last = piece[-1:]
            result.tail = (result.tail + piece)[-32:]
        else:
            count = 1 if piece else 0
        if count:
            if result.first_event_at is None:
                result.first_event_at = now
                if self._first_only:  # hang up: only the first byte and event were wanted
                    result.complete = True
                    if self._transport is not None:
                        self._transport.close()
            result.event_times.extend([now] * count)

    def _finish(self) -> None:
        result = self._result
        result.complete = True
        result.done = result.tail.endswith(b"data: [DONE]\n\n")
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        result = self._result
        if not result.complete and result.error is None:
            result.error = f"connection lost ({type(exc).__name__ if exc else 'EOF'})"
        if not self._finished.done():
            self._finished.set_result(None)


def build_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    """Host, port and the raw HTTP/1.1 request bytes for one POST of ``body`` to ``url``."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return host, port, head.encode("ascii") + body


async def stream_once(
    url: str, body: bytes, limit: float = 120.0, *, first_only: bool = False
) -> StreamResult:
    """One streaming POST, read to the end (or until ``limit`` seconds passed, or with
    ``first_only`` until the first event)."""
    host, port, request = build_request(url, body)
    loop = asyncio.get_running_loop()
    result = StreamResult(sent_at=time.monotonic())
    finished: asyncio.Future[None] = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(limit):
            transport, _ = await loop.create_connection(
                lambda: _StreamProtocol(request, result, finished, first_only), host, port
            )
            await finished
    except TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = f"connect failed ({type(exc).__name__})"
    finally:
        if transport is not None:
            transport.close()
    return result


async def run_streams(
    url: str, body: bytes, count: int, *, limit: float = 120.0, stagger: float = 0.0
) -> list[StreamResult]:
    """``count`` concurrent streams; the starts spread evenly over ``stagger`` seconds."""

    async def one(i: int) -> StreamResult:
        if stagger > 0:
            await asyncio.sleep(stagger * i / count)
        return await stream_once(url, body, limit)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def keep_busy(url: str, body: bytes, count: int) -> None:
    """``count`` streams at once, each started again as soon as it ends, until cancelled."""

    async def one() -> None:
        while True:
            await stream_once(url, body)

    await asyncio.gather(*(one() for _ in range(count)))


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.client URL --busy N --body JSON``: N streams against
    URL without end, from a process of its own, so that a probe measuring the relay's latency
    meanwhile is not slowed by its own client parsing the load. Prints ``READY <url>``."""
    import argparse

    from bench.procs import fast_loop_policy, raise_fd_limit

    parser = argparse.ArgumentParser(description="keep a relay busy with N streams")
    parser.add_argument("url")
    parser.add_argument("--busy", type=int, default=8)
    parser.add_argument("--body", required=True, help="the request body (JSON)")
    args = parser.parse_args(argv)
    body = args.body.encode()
    raise_fd_limit()
    fast_loop_policy()
    print(f"READY {args.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(keep_busy(args.url, body, args.busy))


if __name__ == "__main__":
    main()
