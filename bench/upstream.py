"""The bench's upstream: the demo upstream (dev/demo_upstream.py) in a process of its own.

    python -m bench.upstream --pace 0.02 --tokens 200 [--replay]

prints ``READY <base URL>`` once it listens, then serves until killed. Every reply is
``--tokens`` ASCII word tokens, ``--pace`` seconds apart; a request with ``reasoning_effort``
first thinks for as many tokens, and one with ``tools`` streams a tool call whose arguments
come in about as many fragments. The listen backlog is raised so that
1,000 connections opened at once are all accepted, and uvloop runs it when installed (it is
bench infrastructure, not a subject).

``--replay`` (W5: unpaced, ``--pace 0``) serves each distinct request's reply from memory:
the demo upstream makes it once, on a private port, and from then on its bytes are written
16 KiB at a time with the event loop let through in between. Made afresh, an unpaced reply
costs the demo upstream a JSON encoding and a write per event, and one reply's whole stream
runs without a pause: while 8 unpaced streams ran, a new request waited about 150 ms for the
upstream to start it, which was nearly all of W5's first byte for both relays, and with the
probe hanging up after its first byte the function's next probe had to wait for a new
connection to be accepted as well (docs/performance.md, eleventh pass). A real provider
answers a new request whatever its other streams are doing, on cores of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from bench.procs import fast_loop_policy, raise_fd_limit
from dev.demo_upstream import DemoUpstream


def reply_of(tokens: int) -> str:
    """A reply that the demo upstream streams as exactly ``tokens`` tokens, none repeated (a
    periodic reply would exercise the function's repetition detector, which real text does
    not)."""
    return "".join(f" w{i}" for i in range(tokens))


def tool_arguments_of(tokens: int) -> str:
    """Tool-call arguments the demo upstream streams in about ``tokens`` fragments."""
    return json.dumps({"text": reply_of(tokens)}, separators=(",", ":"))


REPLAY_SLICE = 16 * 1024  # bytes per write of a replayed reply (about 55 chat events)
REPLAY_ENTRIES = 64  # distinct requests remembered (the bench sends a dozen kinds)
# Not copied from the demo's reply onto a replayed one: aiohttp sets them for its own framing.
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "date", "server"}


def demo_upstream(pace: float, tokens: int) -> DemoUpstream:
    """The demo upstream, with thinking and tool calls as long as the reply (for W2's and W6's
    reasoning and tools variants)."""
    return DemoUpstream(
        pace=pace,
        reply=reply_of(tokens),
        reasoning=reply_of(tokens),
        tool_arguments=tool_arguments_of(tokens),
    )


type Reply = tuple[dict[str, str], bytes]  # the demo's headers for it, and its whole body


class Replay:
    """Serves each distinct POST's reply from memory, fetched once from the demo upstream at
    ``source`` (the same app on a private port). Only whole 200 answers are remembered: an
    error, or a request the demo refuses, goes to the demo every time."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._replies: dict[tuple[str, bytes], Reply] = {}
        self._session: aiohttp.ClientSession | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        key = (request.path_qs, await request.read())
        reply = self._replies.get(key)
        if reply is None:
            reply = await self._fetch(request, key[1])
            if reply is None:
                return await handler(request)
            if len(self._replies) < REPLAY_ENTRIES:
                self._replies[key] = reply
        headers, body = reply
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for start in range(0, len(body), REPLAY_SLICE):
            await resp.write(body[start : start + REPLAY_SLICE])
            await asyncio.sleep(0)  # every other reply and every new request get a turn
        await resp.write_eof()
        return resp

    async def _fetch(self, request: web.Request, body: bytes) -> Reply | None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        url = self._source + request.path_qs
        async with self._session.post(url, data=body, headers=headers) as source:
            if source.status != 200:
                return None
            kept = {k: v for k, v in source.headers.items() if k.lower() not in _HOP_BY_HOP}
            return kept, await source.read()


async def serve(host: str, port: int, pace: float, tokens: int, *, replay: bool = False) -> None:
    demo = demo_upstream(pace, tokens)
    if replay:  # the same app on a private port makes each reply once
        source = web.AppRunner(demo_upstream(pace, tokens).app, access_log=None)
        await source.setup()
        await web.TCPSite(source, "127.0.0.1", 0).start()
        source_host, source_port = source.addresses[0][:2]
        demo.app.middlewares.append(Replay(f"http://{source_host}:{source_port}").middleware)
    runner = web.AppRunner(demo.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"READY http://{bound_host}:{bound_port}/v1", flush=True)
    await asyncio.get_running_loop().create_future()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the demo upstream, for the bench")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pace", type=float, default=0.02)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument(
        "--replay", action="store_true", help="serve each distinct reply from memory (unpaced)"
    )
    args = parser.parse_args(argv)
    if args.replay and args.pace != 0:
        parser.error("--replay serves unpaced replies: use it with --pace 0")
    raise_fd_limit()
    fast_loop_policy()
    try:
        asyncio.run(serve(args.host, args.port, args.pace, args.tokens, replay=args.replay))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
