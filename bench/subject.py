"""Serve one bench subject the way Vercel's Python runtime serves a function.

    python -m bench.subject function|passthrough --upstream URL [--loop asyncio|uvloop]

The runtime (vercel-runtime, ``vc_init.py``) pre-binds 127.0.0.1:0 with a backlog of 2,048 and
runs its vendored uvicorn with ``lifespan="auto"``, no access log and ``log_level="warning"``;
its event loop and HTTP parser are uvicorn's ``auto`` choice, so they depend on what the
deployment installs. Here that choice follows ``requirements.txt``: uvloop and httptools run
only if it lists them (installing them in the dev venv must not change what is measured).
Prints ``READY <url of the endpoint>``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
from typing import Any

from vercel_runtime._vendor import uvicorn

from bench.procs import ROOT, raise_fd_limit

BENCH_KEY = "sk-bench-not-a-real-key"


def deployed(package: str) -> bool:
    """Whether requirements.txt deploys ``package``."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = {line.split("#")[0].split("==")[0].split(">")[0].strip().lower() for line in lines}
    return package in names


def load_app(kind: str) -> Any:
    if kind == "function":
        return importlib.import_module("api.generate").app
    return importlib.import_module("bench.passthrough").app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="serve a bench subject under uvicorn")
    parser.add_argument("kind", choices=("function", "passthrough"))
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None)
    parser.add_argument("--http", choices=("h11", "httptools"), default=None)
    args = parser.parse_args(argv)
    raise_fd_limit()
    os.environ.update(
        OPENAI_API_KEY=BENCH_KEY,
        OPENAI_BASE_URL=args.upstream,
        MAX_TOKENS="4096",
    )
    app = load_app(args.kind)
    loop = args.loop or ("uvloop" if deployed("uvloop") else "asyncio")
    http = args.http or ("httptools" if deployed("httptools") else "h11")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app=app,
        lifespan="auto",
        access_log=False,
        log_config=None,
        log_level="warning",
        loop=loop,
        http=http,
    )
    server = uvicorn.Server(config)
    path = "/api/generate" if args.kind == "function" else "/"
    print(f"READY http://127.0.0.1:{port}{path}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
