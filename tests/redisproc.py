"""A real ``redis-server`` per test session, on a free loopback port (Debian's package; ``make
test`` installs it). Never skipped: a missing server fails the tests that need it, loudly.

``redis_server`` is shared by the session and emptied before each test that asks for
``redis_url``; ``make_redis`` starts extra servers that a test may kill (the store going away).
Every server is stopped at the end; none is left running.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from lib.store import KEY_PREFIX


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process without persistence, bound to 127.0.0.1."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; run `make deps-redis` (or `make test`)")
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.01)  # polling a starting process, not hoping for timing

    def restart(self) -> None:
        """Kill the server and start a new, empty one on the same port (no persistence)."""
        self.stop()
        self._start()

    def stored_keys(self) -> list[str]:
        return sorted(k.decode() for k in self.client.keys(KEY_PREFIX + "*"))

    def pause(self) -> None:
        """Freeze the server: connections stay open but nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client.flushall()
    return redis_server.url


@pytest.fixture
def make_redis() -> Iterator[Callable[[], RedisServer]]:
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        servers.append(RedisServer())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
