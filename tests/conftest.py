"""Shared fixtures: the demo upstream on a real loopback server, and the function served by real
uvicorn (as Vercel's runtime serves it), read by a real HTTP client.

A canary key is the function's ``OPENAI_API_KEY`` in every test that builds one here; see
``tests/test_secrets.py`` for the scan that proves it never leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from dev.demo_upstream import DemoUpstream, start_demo_upstream
from dev.inprocess import serve_asgi
from lib.config import PROJECT_ROOT, load_settings
from lib.handler import GenerateHandler
from tests.jsdriver import NodeDriver

pytest_plugins = ["tests.redisproc"]  # a real redis-server for the shared-limit tests

CANARY_KEY = "sk-canary-7f3c9a1e5b2d4c6e8f0a1b3c5d7e9f1a"


@dataclass
class Function:
    """A running function: its URL and the handler behind it."""

    url: str
    handler: GenerateHandler


class ErrorTap(logging.Handler):
    """Records any log record that carries a traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None or record.levelno >= logging.ERROR:
            self.tracebacks.append(record.getMessage())


@contextlib.contextmanager
def tapped[H: logging.Handler](tap: H, logger: str = "streaming_function") -> Iterator[H]:
    """``tap`` on the named logger for the duration (the function's own by default)."""
    target = logging.getLogger(logger)
    target.addHandler(tap)
    try:
        yield tap
    finally:
        target.removeHandler(tap)


@pytest.fixture
def error_tap() -> Iterator[ErrorTap]:
    """Every log record with a traceback or at ERROR, for tests that must see none."""
    with tapped(ErrorTap()) as tap:
        yield tap


@pytest.fixture(scope="module")
def node() -> Iterator[NodeDriver]:
    """One node process running tests/js/driver.mjs for the module (starting it costs ~0.3 s)."""
    driver = NodeDriver()
    yield driver
    driver.close()


@pytest.fixture
def demo() -> DemoUpstream:
    return DemoUpstream(pace=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served_upstream() -> AsyncIterator[tuple[DemoUpstream, str]]:
    """A demo upstream and its base URL for a module whose function runs in another process
    (Vercel's runtime, a built bundle, ``vercel dev``): it lives on the module's loop."""
    demo, runner, base_url = await start_demo_upstream(pace=0)
    yield demo, base_url
    await runner.cleanup()


@pytest.fixture
async def upstream_url(
    demo: DemoUpstream, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> str:
    server = await aiohttp_server(demo.app)  # TestServer turns on handler_cancellation
    return str(server.make_url("/v1"))


@pytest.fixture
async def make_function(
    upstream_url: str,
) -> AsyncIterator[Callable[..., Awaitable[Function]]]:
    """Start the function with the given environment (on top of key and upstream URL)."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def start(root: Path = PROJECT_ROOT, **env: str) -> Function:
        # Retries off unless a test asks for them (tests/test_faults.py): one fault, one request.
        environ = {
            "OPENAI_API_KEY": CANARY_KEY,
            "OPENAI_BASE_URL": upstream_url,
            "UPSTREAM_MAX_RETRIES": "0",
            **env,
        }
        handler = GenerateHandler(load_settings(environ, root=root))
        url, stop = await serve_asgi(handler)
        stops.append(stop)
        return Function(url=url + "/api/generate", handler=handler)

    yield start
    for stop in reversed(stops):
        await stop()


@pytest.fixture
async def function(make_function: Callable[..., Awaitable[Function]]) -> Function:
    return await make_function()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


class LogTap(logging.Handler):
    """Collects the function's log lines; tests can await the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    async def wait_for(self, count: int) -> list[str]:
        """Wait (at most 5 s) until ``count`` lines were written."""
        async with asyncio.timeout(5):
            while len(self.lines) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.lines

    async def requests(self, count: int) -> list[str]:
        """Wait (at most 5 s) until ``count`` per-request lines were written (start-up warnings
        and other events do not count); returns those lines."""
        async with asyncio.timeout(5):
            while (
                len(found := [x for x in self.lines if x.startswith('{"event":"request"')]) < count
            ):
                self._changed.clear()
                await self._changed.wait()
        return found


@pytest.fixture
def logs() -> Iterator[LogTap]:
    with tapped(LogTap()) as tap:
        yield tap
