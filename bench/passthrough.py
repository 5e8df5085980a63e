"""The pass-through baseline: the least a Python relay can do, as a plain ASGI app.

One shared aiohttp session (created in the running loop on first use); each request's body is
forwarded as it is with the server's key, and every upstream chunk is written on the moment it
arrives, unframed and unparsed. It is served exactly as our function is (same uvicorn, same
settings, see bench/subject.py), so a ratio between the two is what our relay code costs.

Its upstream reads are capped at 64 KiB as the function's are (``lib/upstream.py``,
``UPSTREAM_READ_SIZE``): asyncio reads with ``recv(256 KiB)``, which glibc serves with mmap in
some processes and not others, and a pass-through that pays an mmap per event in one run and
not in the next would make every ratio against it swing by a third (flattering the function
in the runs where it pays).
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

_session: aiohttp.ClientSession | None = None
UPSTREAM = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8001/v1") + "/chat/completions"
KEY = os.environ.get("OPENAI_API_KEY", "")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _session is None:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        _session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with _session.post(UPSTREAM, data=body, headers=headers) as upstream:
        transport = upstream.connection.transport if upstream.connection else None
        if transport is not None and hasattr(transport, "max_size"):
            transport.max_size = 64 * 1024
        content_type = upstream.headers.get("Content-Type", "text/event-stream").encode()
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
            }
        )
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
