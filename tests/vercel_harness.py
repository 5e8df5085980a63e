"""Play the Vercel platform around a function, using the real `vercel-runtime` package.

The platform starts a Python function by running `vercel_runtime.vc_init` in a fresh process with
the project root as working directory. Two modes, chosen by the environment (docs/platform.md):

- IPC mode (production, streams): `VERCEL_IPC_PATH` names a Unix socket the platform listens on.
  The runtime connects, serves the ASGI app with uvicorn on an ephemeral loopback port, and
  announces it with a NUL-terminated `server-started` JSON message. After that it keeps sending
  `log`, `handler-started` and `end` messages; they must be drained, or the runtime's blocking
  `sendall` stalls once the socket buffer fills.
- Lambda mode (no socket): the module exposes `vc_handler(event, context)`, which proxies one
  request to the in-process server and returns the whole response buffered.

Nothing here knows about our function: any `api/*.py` file of any project root can be started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_BOOT = "from vercel_runtime.vc_init import *"
START_TIMEOUT = 20.0


def handler_environ(
    root: Path, entrypoint: str, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the platform gives a function process: handler variables, root on path.

    Inherited variables that would change the function's settings (any `OPENAI_*`) are
    dropped so that a developer's own key never leaks into a test; `overrides` adds them back.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VERCEL_"))}
    module = entrypoint.removesuffix(".py").replace("/", ".")
    env.update(
        {
            "__VC_HANDLER_ENTRYPOINT": entrypoint,
            "__VC_HANDLER_ENTRYPOINT_ABS": str(root / entrypoint),
            "__VC_HANDLER_MODULE_NAME": module,
            "__VC_HANDLER_VARIABLE_NAME": "app",
            "PYTHONPATH": str(root),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides or {})
    return env


@dataclass
class IpcRuntime:
    """One function process in IPC mode, and everything it said on the socket."""

    process: subprocess.Popen[bytes]
    port: int
    started: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until `count` messages of type `kind` have arrived (the runtime sends `end`
        after the response's last byte, so a client can see the body end before it)."""
        with self.arrived:
            return self.arrived.wait_for(lambda: self.types().count(kind) >= count, timeout)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        """Everything the function printed or logged, decoded (the runtime base64s it)."""
        out = []
        for message in list(self.messages):
            if message.get("type") == "log":
                out.append(base64.b64decode(message["payload"]["message"]).decode(errors="replace"))
        return "".join(out)

    def types(self) -> list[str]:
        return [str(m.get("type")) for m in list(self.messages)]


def _read_messages(
    conn: socket.socket,
    sink: list[dict[str, Any]],
    arrived: threading.Condition,
    first: threading.Event,
) -> None:
    """Split the NUL-terminated JSON stream into messages until the runtime hangs up."""
    buffer = b""
    with conn:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                first.set()
                return
            buffer += chunk
            *frames, buffer = buffer.split(b"\0")
            with arrived:
                for frame in frames:
                    sink.append(json.loads(frame))
                    if sink[-1].get("type") in ("server-started", "unrecoverable-error"):
                        first.set()
                arrived.notify_all()


@contextlib.contextmanager
def ipc_runtime(
    root: Path = PROJECT_ROOT,
    entrypoint: str = "api/generate.py",
    env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    command: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Iterator[IpcRuntime]:
    """Start `entrypoint` under the real runtime in IPC mode; stop it and its socket on exit.

    `command` and `environ` replace the boot command and the whole environment: a built bundle
    is started by its own `vc__handler__python` with the environment its `.vc-config.json` names.
    """
    with tempfile.TemporaryDirectory(prefix="vc-ipc-") as tmp:
        path = os.path.join(tmp, "ipc.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        server.settimeout(timeout)
        base = handler_environ(root, entrypoint, env) if environ is None else dict(environ)
        process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            list(command or [sys.executable, "-c", RUNTIME_BOOT]),
            cwd=root,
            env={**base, "VERCEL_IPC_PATH": path},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            runtime = _await_server_started(server, process, timeout)
            yield runtime
        finally:
            server.close()
            stop_process(process)


def _await_server_started(
    server: socket.socket, process: subprocess.Popen[bytes], timeout: float
) -> IpcRuntime:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        raise RuntimeError(
            f"runtime never connected to the IPC socket: {_drain(process)}"
        ) from None
    messages: list[dict[str, Any]] = []
    arrived = threading.Condition()
    first = threading.Event()
    reader = threading.Thread(
        target=_read_messages, args=(conn, messages, arrived, first), daemon=True
    )
    reader.start()
    if not first.wait(timeout):
        raise RuntimeError(f"no server-started within {timeout}s: {_drain(process)}")
    started = next((m for m in messages if m.get("type") == "server-started"), None)
    if started is None:
        raise RuntimeError(f"runtime failed to start: {messages} {_drain(process)}")
    port = int(started["payload"]["httpPort"])
    return IpcRuntime(process, port, started, messages, arrived)


def _drain(process: subprocess.Popen[bytes]) -> str:
    stop_process(process)
    assert process.stdout is not None
    return process.stdout.read().decode(errors="replace")


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace`; always reap, so no zombie outlives a test."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None and not process.stdout.closed:
        with contextlib.suppress(OSError):
            process.stdout.close()


# --- Lambda mode -----------------------------------------------------------------------------

# Runs in the function process: import the runtime (which imports the function), feed it each
# event, and write the responses as JSON to the file named by argv[1]. Stdout is left to the app.
_LAMBDA_DRIVER = """
import json, sys
from vercel_runtime.vc_init import vc_handler
events = json.load(sys.stdin)
results = [vc_handler(event, None) for event in events]
with open(sys.argv[1], "w") as out:
    json.dump(results, out)
"""


@dataclass(frozen=True)
class LambdaRequest:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def event(self) -> dict[str, Any]:
        """The event shape `vc_handler` reads: a JSON payload in the event's `body` field."""
        payload = {
            "method": self.method,
            "path": self.path,
            "headers": dict(self.headers),
            "body": base64.b64encode(self.body).decode(),
            "encoding": "base64",
        }
        return {"body": json.dumps(payload)}


@dataclass(frozen=True)
class LambdaResponse:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, values in self.headers.items():
            if key.lower() == name.lower():
                return values[0]
        return None


def invoke_lambda(
    requests: Sequence[LambdaRequest],
    root: Path = PROJECT_ROOT,
    entrypoint: str = "api/generate.py",
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[LambdaResponse]:
    """Start one Lambda-mode process, send it `requests` in order, return the buffered answers."""
    with tempfile.TemporaryDirectory(prefix="vc-lambda-") as tmp:
        out = os.path.join(tmp, "results.json")
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
            [sys.executable, "-c", _LAMBDA_DRIVER, out],
            cwd=root,
            env=handler_environ(root, entrypoint, env),
            input=json.dumps([r.event() for r in requests]).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"lambda driver failed ({done.returncode}): {done.stderr.decode()}")
        with open(out) as f:
            results = json.load(f)
    responses = []
    for result in results:
        body = result.get("body", "")
        raw = base64.b64decode(body) if result.get("encoding") == "base64" else body.encode()
        responses.append(LambdaResponse(int(result["statusCode"]), result["headers"], raw))
    return responses


def rfc3339_in(seconds: float) -> str:
    """The `x-vercel-internal-deadline` value for `seconds` from now, as the platform sends it."""
    from datetime import UTC, datetime, timedelta

    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- reading streams -------------------------------------------------------------------------


async def sse_data(content: Any, silence: float = 10.0) -> AsyncIterator[str]:
    """Yield each event's `data` as soon as its blank line arrives (LF framing, as we emit it).

    `content` is an aiohttp `StreamReader`; reading raw chunks, not lines, so that nothing here
    waits for more than the event it is about to yield. `silence` bounds each wait, so that a
    stream held back by a buffering bug fails the test instead of hanging it.
    """
    buffer = b""
    while chunk := await asyncio.wait_for(content.readany(), silence):
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            lines = [line for line in frame.split(b"\n") if line.startswith(b"data:")]
            if lines:
                yield "\n".join(line[5:].removeprefix(b" ").decode() for line in lines)


@contextlib.contextmanager
def serve_process(
    args: Sequence[str] = (), env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT
) -> Iterator[tuple[str, list[str], subprocess.Popen[bytes]]]:
    """Run `python -m dev.serve --port 0 ARGS`; yield its URL, the lines printed before it was
    ready, and the process. Stopped with SIGTERM (uvicorn's graceful shutdown) on exit."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VERCEL_"))}
    process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "dev.serve", "--port", "0", *args],
        cwd=PROJECT_ROOT,
        env={**base, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    ready = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if line.startswith("Ready on "):
                url.append(line.removeprefix("Ready on ").strip())
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or not url:
            raise RuntimeError("dev.serve did not start:\n" + "\n".join(lines))
        yield url[0], lines, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
