"""Drive the real JavaScript clients (``tests/js/driver.mjs``) from pytest.

One node process per test module (starting node and importing the AI SDK costs ~0.3 s; Chromium
more), talked to over stdin/stdout with JSON lines. The process is owned by a module-scoped
fixture while each test's servers live on that test's event loop, so replies are matched on a
reader thread and handed to the loop as ``concurrent.futures`` results: a call never blocks the
loop that serves the function the client is talking to.

The node packages are installed by ``make deps-js`` (``npm ci`` from the committed lock file),
which ``make test`` runs first; a missing install fails loudly instead of skipping. Node itself
comes from that install too (the npm ``node`` package, 22.x): the pinned ``ai`` packages declare
``node >= 22`` and the machines ship node 20.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
NODE = JS_DIR / "node_modules" / ".bin" / "node"


class NodeDriver:
    """A running ``driver.mjs``; ``await call(op, **args)`` returns the op's result."""

    def __init__(self) -> None:
        if not NODE.exists() or not (JS_DIR / "node_modules" / "ai").is_dir():
            raise RuntimeError("tests/js/node_modules is missing: run `make deps-js`")
        self._proc = subprocess.Popen(  # noqa: S603  # a fixed argv: node and our script
            [str(NODE), str(JS_DIR / "driver.mjs")],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ids = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._waiting[0] = ready
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready.result(timeout=30)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            reply = json.loads(line)
            with self._lock:
                future = self._waiting.pop(reply["id"], None)
            if future is None:
                continue
            if reply["ok"]:
                future.set_result(reply["result"])
            else:
                future.set_exception(RuntimeError(reply["error"]))
        with self._lock:
            for future in self._waiting.values():
                future.set_exception(RuntimeError("the node driver exited"))
            self._waiting.clear()

    async def call(self, op: str, within: float = 20, **args: Any) -> Any:
        """Run ``op`` in node; fails if it has not answered ``within`` seconds."""
        request_id = next(self._ids)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._waiting[request_id] = future
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": request_id, "op": op, "args": args}) + "\n")
        self._proc.stdin.flush()
        async with asyncio.timeout(within):
            return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
