"""The bench's upstream: the demo upstream (dev/demo_upstream.py) in a process of its own.

    python -m bench.upstream --pace 0.02 --tokens 200

prints ``READY <base URL>`` once it listens, then serves until killed. Every reply is
``--tokens`` ASCII word tokens, ``--pace`` seconds apart; a request with ``reasoning_effort``
first thinks for as many tokens, and one with ``tools`` streams a tool call whose arguments
come in about as many fragments. The listen backlog is raised so that
1,000 connections opened at once are all accepted, and uvloop runs it when installed (it is
bench infrastructure, not a subject).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web

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


async def serve(host: str, port: int, pace: float, tokens: int) -> None:
    # Thinking and tool calls as long as the reply, for W2's reasoning and tools variants.
    demo = DemoUpstream(
        pace=pace,
        reply=reply_of(tokens),
        reasoning=reply_of(tokens),
        tool_arguments=tool_arguments_of(tokens),
    )
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
    args = parser.parse_args(argv)
    raise_fd_limit()
    fast_loop_policy()
    try:
        asyncio.run(serve(args.host, args.port, args.pace, args.tokens))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
