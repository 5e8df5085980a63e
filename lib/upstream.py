"""The upstream client: the only module that imports aiohttp.

One ``ClientSession`` per process and event loop, created lazily inside the running loop on the
first request and reused by every later one, so a warm function skips DNS, TCP and TLS set-up.
aiohttp's defaults are wrong for a relay (docs/protocol.md section 2): its 300 s ``total`` timeout
would cut every long stream and its 100-connection pool would queue stream 101. Here the connect,
first-byte and idle limits are separate, there is no total, and the pool size is a setting.

Every aiohttp exception is translated into ``lib.errors`` in :func:`_translate`, most specific
first (aiohttp's timeouts are also connection errors). Messages never carry request headers, so
the key cannot leak through an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import aiohttp

from lib.asgi import TIMER_CONTEXT
from lib.config import UpstreamSettings
from lib.errors import (
    APIError,
    UpstreamAuthError,
    UpstreamBroken,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    redact,
)
from lib.request import UpstreamRequest

USER_AGENT = "streaming-function/0.1 (+aiohttp)"
ERROR_BODY_LIMIT = 64 * 1024
_RETRY_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")
_RETRY_AFTER = re.compile(r"[0-9]{1,10}(\.[0-9]{1,3})?|[A-Za-z0-9 ,:]{1,40} GMT")


# What UpstreamStream.finish reads after [DONE] at most: the body's end is a few bytes, in
# flight when [DONE] is read; an upstream that goes on past [DONE] is not waited for.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 0.25


class UpstreamStream:
    """An accepted upstream response whose body is read chunk by chunk."""

    __slots__ = (
        "_expired",
        "_reader",
        "_response",
        "_timer",
        "_timer_at",
        "_wake",
    )

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._init_read_timer()
        _small_reads(response)

    def _init_read_timer(self) -> None:
        """read_before's one timer per stream: when it is set for, the deadline of the read in
        progress, the task waiting in it, and whether the timer cancelled that task (a stream
        that wraps another calls this instead of ``__init__``)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._wake = 0.0
        self._reader: asyncio.Task[Any] | None = None
        self._expired = False

    async def read_before(self, wake: float) -> bytes:
        """:meth:`read`, raising ``TimeoutError`` if nothing arrived by ``wake`` (loop time).

        The same contract as ``async with asyncio.timeout_at(wake): await read()``, at less cost
        for a stream whose deadline moves forward on every read (the relay's idle and
        keep-alive limits): that makes a ``Timeout`` and a ``TimerHandle`` per read, cancelled
        a few milliseconds later. Here one timer per stream stays armed; it is moved only when a
        deadline comes earlier than it, and when it fires before the current deadline it
        re-arms itself instead of cancelling anything. At real pacing this runs once per event,
        so :meth:`read` is inlined (one coroutine frame less); a stream that wraps another
        overrides :meth:`read` and gets :meth:`_read_before_via_read`.
        """
        self._wake = wake  # the read's deadline; the timer moves only if it comes earlier
        if self._timer is None or wake < self._timer_at:
            self._move_timer(wake)  # rarely: the common case costs no call
        task = self._reader = asyncio.current_task()  # the task the timer cancels
        try:
            return await self._response.content.readany()
        except (aiohttp.ClientError, RuntimeError) as exc:
            raise _broken(exc) from None
        except asyncio.CancelledError:
            self._cancelled(task)
            raise
        finally:
            self._reader = None

    async def _read_before_via_read(self, wake: float) -> bytes:
        """:meth:`read_before` for a subclass whose :meth:`read` is its own."""
        self._wake = wake
        if self._timer is None or wake < self._timer_at:
            self._move_timer(wake)
        task = self._reader = asyncio.current_task()
        try:
            return await self.read()
        except asyncio.CancelledError:
            self._cancelled(task)
            raise
        finally:
            self._reader = None

    def _move_timer(self, wake: float) -> None:
        """Arm the stream's timer for ``wake`` (none was armed, or it was set for later)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
        self._timer_at = wake
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(wake, self._on_timer, context=TIMER_CONTEXT)

    def _cancelled(self, task: asyncio.Task[Any] | None) -> None:
        """The read was cancelled: a ``TimeoutError`` if our timer did it (and no one else
        cancelled the task too); otherwise the cancellation goes on."""
        if self._expired and task is not None:
            self._expired = False
            if task.uncancel() == 0:
                raise TimeoutError from None

    def _on_timer(self) -> None:
        reader = self._reader
        if reader is None:
            self._timer = None  # no read waits: the next read_before arms a new one
        elif self._wake <= self._timer_at:  # the deadline it was set for: the read expired
            self._timer = None
            self._expired = True
            reader.cancel()
        else:  # the deadline moved on since: wait for it (no clock read, no cancellation)
            self._timer_at = self._wake
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self._wake, self._on_timer, context=TIMER_CONTEXT)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def read(self) -> bytes:
        """The next raw chunk as it arrived (``b""`` at the end). Safe to cancel: unread bytes
        stay buffered, so a caller may wrap it in a timeout and call it again."""
        try:
            return await self._response.content.readany()
        except (aiohttp.ClientError, RuntimeError) as exc:
            raise _broken(exc) from None

    def close(self) -> None:
        """Drop the connection (a half-read stream cannot go back to the pool)."""
        self._stop_timer()
        self._response.close()

    def release(self) -> None:
        """Return the connection to the pool after a complete read."""
        self._stop_timer()
        self._response.release()

    async def finish(self, within: float = DRAIN_SECONDS) -> None:
        """After ``[DONE]``, once the caller's answer is complete: read the body to its end, at
        most :data:`DRAIN_BYTES` within ``within`` seconds (the relay passes less near the
        invocation's deadline), so that the connection goes back to the pool; past either
        bound, or on a failure, it is dropped instead.

        The body's end (the chunked encoding's last chunk) often comes a moment after
        ``[DONE]``, and aiohttp drops a connection whose body was not read to its end: the next
        request of a warm instance would then pay TCP and TLS set-up again (against the demo
        upstream, about one request in five did)."""
        self._stop_timer()
        content = self._response.content
        if not content.at_eof():
            if within <= 0:  # no time left: not a moment's wait
                self._response.close()
                return
            left = DRAIN_BYTES
            try:
                async with asyncio.timeout(within):
                    while left >= 0 and (chunk := await content.readany()):
                        left -= len(chunk)
            except (TimeoutError, aiohttp.ClientError, RuntimeError):
                left = -1
            if left < 0:
                self._response.close()
                return
        self._response.release()


# asyncio's socket transport reads with ``recv(256 KiB)``: glibc serves an allocation that size
# with mmap (its threshold starts at 128 KiB) and the read of a ~200-byte event then costs an
# mmap, a page fault, an mremap and a munmap. Whether a process pays that depends on its malloc
# history (the threshold rises once a big mmapped block is freed): measured bimodal, 3 mmaps in
# one 100-stream run, 10,600 triplets and +30% CPU in the next. Reads of at most 64 KiB always
# come from the heap. An event stream sends far less than that between two reads.
UPSTREAM_READ_SIZE = 64 * 1024


def _small_reads(response: aiohttp.ClientResponse) -> None:
    """Cap the connection's read size (``max_size``, an attribute of asyncio's selector
    transport; other loops' transports have none and are left alone)."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    if transport is not None and getattr(transport, "max_size", 0) > UPSTREAM_READ_SIZE:
        with contextlib.suppress(AttributeError):
            transport.max_size = UPSTREAM_READ_SIZE  # type: ignore[attr-defined]


def _broken(exc: Exception) -> UpstreamBroken:
    """What a failed mid-stream read means to the caller (both readers raise it)."""
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamBroken(f"The upstream connection broke mid-stream ({type(exc).__name__}).")
    # aiohttp's RuntimeError "Connection closed.": the session closed under us
    return UpstreamBroken("The upstream connection was closed mid-stream.")


class UpstreamClient:
    """Sends the one streaming request per invocation; owns the shared session."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=settings.connect_timeout, sock_read=None
        )

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self._settings.max_connections,
                limit_per_host=0,
                ttl_dns_cache=300,
                keepalive_timeout=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("Accept-Encoding",),
            )
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def fetch(self, url: str, *, within: float, max_bytes: int) -> bytes:
        """GET a small document (an auth provider's JWKS) through the same session.

        A 200 only, no redirects, at most ``max_bytes``, all within ``within`` seconds; any
        failure is an ``UpstreamError`` naming the URL and what went wrong, never a header.
        """
        session = self._session_for_loop()
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        }
        body = bytearray()
        try:
            async with asyncio.timeout(within):
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    if response.status != 200:
                        raise UpstreamError(f"{url} answered {response.status}.")
                    while chunk := await response.content.read(max_bytes + 1 - len(body)):
                        body += chunk
                        if len(body) > max_bytes:
                            raise UpstreamError(f"{url} sent more than {max_bytes} bytes.")
        except TimeoutError:
            raise UpstreamTimeout(f"{url} did not answer within {within:g} s.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{url} could not be fetched ({type(exc).__name__}).") from None
        return bytes(body)

    async def open(self, request: UpstreamRequest, api_key: str) -> UpstreamStream:
        """Send the request; return once the upstream accepted it with an event stream.

        Raises an ``APIError`` mapped from the upstream's status, or from a failure to
        connect or answer within the first-byte limit.
        """
        session = self._session_for_loop()
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        }
        response: aiohttp.ClientResponse | None = None
        with _translate(self._settings, "connect"):
            async with asyncio.timeout(self._settings.first_byte_timeout):
                response = await session.post(
                    request.url, data=request.body, headers=headers, allow_redirects=False
                )
        try:
            if response.status != 200:
                raise await _status_error(response, api_key, self._settings)
            # The media type from the header itself: aiohttp's ``content_type`` parses and
            # keeps a dict of parameters on the response, held for the whole stream.
            media = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
            if media != "text/event-stream":
                raise UpstreamProtocolError(
                    f"The upstream answered 200 with {media or 'no content type'}"
                    ", not an event stream."
                )
        except BaseException:
            response.close()
            raise
        return UpstreamStream(response)


@contextlib.contextmanager
def _translate(settings: UpstreamSettings, phase: str) -> Iterator[None]:
    """aiohttp and asyncio failures before the stream, as our errors (most specific first)."""
    try:
        yield
    except APIError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError):
        error: UpstreamError = UpstreamTimeout(
            "The upstream did not answer in time "
            f"(connect limit {settings.connect_timeout:g} s, first byte "
            f"{settings.first_byte_timeout:g} s)."
        )
    except aiohttp.ClientConnectorError as exc:
        error = UpstreamError(
            f"Could not connect to the upstream ({exc.os_error.__class__.__name__})."
        )
    except aiohttp.ClientError as exc:
        error = UpstreamError(f"The upstream request failed during {phase} ({type(exc).__name__}).")
    else:
        return
    error.connect_failure = True  # nothing came back: asking again may help (lib/retry.py)
    raise error from None


async def _status_error(
    response: aiohttp.ClientResponse, api_key: str, settings: UpstreamSettings
) -> APIError:
    error = await _status_error_for(response, api_key, settings)
    if isinstance(error, UpstreamError):
        error.upstream_status = response.status
        error.retry_headers = {
            name: response.headers[name] for name in _RETRY_HEADERS if name in response.headers
        }
    return error


async def _status_error_for(
    response: aiohttp.ClientResponse, api_key: str, settings: UpstreamSettings
) -> APIError:
    status = response.status
    message, code = await _error_details(response, api_key, settings)
    if status in (400, 422):
        return UpstreamRejectedRequest(message or f"The upstream rejected the request ({status}).")
    if status == 404:
        if code == "model_not_found" or (message and "model" in message.lower()):
            return UpstreamRejectedRequest(
                message or "The upstream does not know this model.", param="model"
            )
        return UpstreamError(
            "The upstream has no such endpoint (404): check OPENAI_BASE_URL on the server."
        )
    if status in (401, 403):
        return UpstreamAuthError(
            f"The upstream rejected the server's credentials ({status}): check OPENAI_API_KEY "
            "on the server."
        )
    if status == 429:
        headers: dict[str, str] = {}
        retry_after = response.headers.get("Retry-After", "").strip()
        if _RETRY_AFTER.fullmatch(retry_after):
            headers["Retry-After"] = retry_after
        return UpstreamRateLimited(
            message or "The upstream is rate limiting this server; try again later.",
            headers=headers,
        )
    if 300 <= status < 400:
        return UpstreamError(f"The upstream answered with a redirect ({status}); not followed.")
    return UpstreamError(f"The upstream failed ({status}).")


async def _error_details(
    response: aiohttp.ClientResponse, api_key: str, settings: UpstreamSettings
) -> tuple[str | None, str | None]:
    """The upstream's own error message and code, read with a size and time bound."""
    try:
        async with asyncio.timeout(settings.idle_timeout):
            raw = await response.content.read(ERROR_BODY_LIMIT)
        data: Any = json.loads(raw)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return redact(error, api_key), None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message")
    code = error.get("code")
    return (
        redact(message, api_key) if isinstance(message, str) else None,
        code if isinstance(code, str) else None,
    )
