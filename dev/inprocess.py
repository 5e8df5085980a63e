"""Serve an ASGI app with real uvicorn inside the running event loop, on an ephemeral loopback
port: how the tests and the soak run the function next to the demo upstream in one process."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn


async def serve_asgi(app: Any, **config: Any) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Start serving ``app``; returns (base URL, stop). ``config`` adds uvicorn settings."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "lifespan": "on",
        "log_level": "warning",
        "timeout_graceful_shutdown": 2,
        "ws": "none",
        "proxy_headers": False,  # as the local server: the caller must not pick its address
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn has no start event; this polls its own flag
        if task.done():
            task.result()
        await asyncio.sleep(0.001)

    async def stop() -> None:
        server.should_exit = True
        await task
        sock.close()

    return f"http://127.0.0.1:{port}", stop
