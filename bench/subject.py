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
from pathlib import Path
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


def census_on_signal(prefix: str) -> None:
    """For bench.memory: on every SIGUSR1, write the live objects the collector tracks, counted
    and sized by kind, to ``<prefix>-<n>.census`` and pymalloc's statistics to ``<prefix>-<n>.pym``
    (n counts from 0); when tracemalloc traces, its snapshot to ``<prefix>-<n>.trace``."""
    import gc
    import signal
    import sys
    from collections import Counter

    count = [0]

    def dump(*_: object) -> None:
        sizes: Counter[str] = Counter()
        numbers: Counter[str] = Counter()
        for obj in gc.get_objects():
            kind = census_kind(obj)
            sizes[kind] += sys.getsizeof(obj)
            numbers[kind] += 1
        path = Path(f"{prefix}-{count[0]}")
        import tracemalloc

        if tracemalloc.is_tracing():  # bench.memory --trace (PYTHONTRACEMALLOC): every block
            own = tracemalloc.Filter(False, tracemalloc.__file__)
            tracemalloc.take_snapshot().filter_traces([own]).dump(str(path.with_suffix(".trace")))
        lines = [f"{kind}\t{numbers[kind]}\t{sizes[kind]}" for kind in numbers]
        saved = os.dup(2)  # _debugmallocstats writes to the C stderr
        with path.with_suffix(".pym").open("wb") as out:
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        path.with_suffix(".census").write_text("\n".join(lines))
        count[0] += 1

    signal.signal(signal.SIGUSR1, dump)


def census_kind(obj: object) -> str:
    """A type name; for a coroutine, async generator, bound method or function, whose."""
    import asyncio
    import types

    kind = type(obj)
    if isinstance(obj, types.CoroutineType):
        return f"coroutine {obj.cr_code.co_qualname}"
    if isinstance(obj, types.AsyncGeneratorType):
        return f"async generator {obj.ag_code.co_qualname}"
    if isinstance(obj, types.MethodType):
        return f"method {getattr(obj.__func__, '__qualname__', '?')}"
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__qualname__}"
    if isinstance(obj, asyncio.TimerHandle):  # a cancelled one waits in the loop's heap
        callback = getattr(obj, "_callback", None)
        name = getattr(callback, "__qualname__", "?") if callback is not None else "cancelled"
        return f"TimerHandle {name}"
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


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
    if os.environ.get("BENCH_CENSUS"):
        census_on_signal(os.environ["BENCH_CENSUS"])
    path = "/api/generate" if args.kind == "function" else "/"
    print(f"READY http://127.0.0.1:{port}{path}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
