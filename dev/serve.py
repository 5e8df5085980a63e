"""A local server that behaves like Vercel for this project: `python -m dev.serve`.

Why not `vercel dev`: it runs Python functions in a Lambda emulator that buffers every response,
and it fails every request to a function whose `vercel.json` entry sets `maxDuration`
(vercel/vercel#17620). This server streams, and follows `vercel.json` the way the platform does:

- every `api/**/*.py` file (not starting with `_`) is a function at `/api/<path>` (`index.py` also
  at its folder), imported as the runtime imports it and served with uvicorn, unbuffered and
  uncompressed; its ASGI lifespan runs as with the runtime's `lifespan="auto"`;
- `functions.<file>.maxDuration` becomes the invocation deadline, set exactly as the runtime sets
  it from `x-vercel-internal-deadline`; at the deadline the invocation is cut, as the platform
  does (504 before the response started, a dropped connection after);
- routing order as `@vercel/routing-utils` builds it: `headers` (matched on the requested path,
  added to every response), then the filesystem (functions, then `public/`), then `rewrites`;
- source patterns are the path-to-regexp subset Vercel documents: literals, `:name`, `:name?`,
  `:name*`, `:name+`, `:name(regex)` and `(regex)`, case-sensitive and strict about the trailing
  slash. A rewrite's destination may use `:name` and `$1`; if its path uses none of the source's
  parameters they are added to the query, as Vercel does. The function sees the requested path
  and the merged query string, like on the platform. Not emulated: `has`/`missing`, `redirects`,
  `cleanUrls`, `trailingSlash`, external destinations (answered 502).

With no `OPENAI_API_KEY` it starts the demo upstream in-process and says so loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import importlib.util
import json
import mimetypes
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INTERNAL_HEADER_PREFIX = b"x-vercel-internal-"

# --- path patterns (pure) --------------------------------------------------------------------

_DEFAULT_SEGMENT = r"[^/#?]+?"
_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class SourcePattern:
    """A compiled `source`: its regex and the parameter name of each group (None if unnamed)."""

    source: str
    regex: re.Pattern[str]
    names: tuple[str | None, ...]

    def match(self, path: str) -> dict[str, str] | None:
        """Parameters by name and by 1-based position (`"1"`, `"2"`...), or None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        params: dict[str, str] = {}
        for index, (name, value) in enumerate(zip(self.names, found.groups(), strict=True), 1):
            params[str(index)] = value or ""
            if name is not None:
                params[name] = value or ""
        return params


def _balanced(source: str, start: int) -> tuple[str, int]:
    """The text inside the parentheses opening at `start`, and the index after them."""
    depth = 0
    for index in range(start, len(source)):
        char = source[index]
        if char == "\\":
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                inner = source[start + 1 : index]
                if re.search(r"\((?!\?)", inner):
                    raise ValueError(f"capturing groups are not allowed in {source!r}")
                return inner, index + 1
    raise ValueError(f"unbalanced parenthesis in {source!r}")


def compile_source(source: str) -> SourcePattern:
    """Compile a Vercel `source` pattern (path-to-regexp, strict and case-sensitive)."""
    if not source.startswith("/"):
        raise ValueError(f"source must start with '/': {source!r}")
    parts: list[str] = []
    names: list[str | None] = []
    index = 0
    while index < len(source):
        char = source[index]
        if char not in ":(":
            parts.append(re.escape(char))
            index += 1
            continue
        name: str | None = None
        if char == ":":
            found = _NAME.match(source, index + 1)
            if found is None:
                raise ValueError(f"parameter without a name in {source!r}")
            name, index = found.group(), found.end()
        pattern = _DEFAULT_SEGMENT
        if index < len(source) and source[index] == "(":
            pattern, index = _balanced(source, index)
        modifier = ""
        if index < len(source) and source[index] in "?*+":
            modifier, index = source[index], index + 1
        # path-to-regexp treats a '/' right before a parameter as its prefix: optional with it.
        prefix = ""
        if parts and parts[-1] == "/":
            prefix = parts.pop()
        if modifier in ("*", "+"):
            repeated = f"{prefix}((?:{pattern})(?:{prefix}(?:{pattern}))*)"
            parts.append(f"(?:{repeated})?" if modifier == "*" else repeated)
        elif modifier == "?":
            parts.append(f"(?:{prefix}({pattern}))?")
        else:
            parts.append(f"{prefix}({pattern})")
        names.append(name)
    return SourcePattern(source, re.compile("".join(parts)), tuple(names))


def fill(template: str, params: Mapping[str, str]) -> str:
    """Substitute `:name` (with any `*`, `+`, `?` modifier) and `$N` from matched parameters."""

    def named(found: re.Match[str]) -> str:
        name = found.group(1)
        return found.group(0) if name.isdigit() else params.get(name, found.group(0))

    def positional(found: re.Match[str]) -> str:
        return params.get(found.group(1), found.group(0))

    text = re.sub(r":([A-Za-z0-9_]+)[*+?]?", named, template)
    return re.sub(r"\$(\d+)", positional, text)


def _uses_param(template: str, names: Iterable[str]) -> bool:
    return any(re.search(rf":{re.escape(name)}(?![A-Za-z0-9_])", template) for name in names)


@dataclass(frozen=True)
class Rewrite:
    pattern: SourcePattern
    destination: str

    def apply(self, path: str) -> tuple[str, list[tuple[str, str]]] | None:
        """The destination path and the query pairs it adds, or None if `path` does not match."""
        params = self.pattern.match(path)
        if params is None:
            return None
        target = urlsplit(self.destination)
        if target.scheme or target.netloc:
            return self.destination, []
        query = [(key, fill(value, params)) for key, value in parse_qsl(target.query, True)]
        named = [name for name in self.pattern.names if name is not None]
        # routing-utils: when the destination path uses none of the source's parameters,
        # they all travel in the query instead (unless the destination sets that key itself).
        if not _uses_param(target.path, named):
            present = {key for key, _ in query}
            query += [(name, params[name]) for name in named if name not in present]
        return fill(target.path, params), query


@dataclass(frozen=True)
class HeaderRule:
    pattern: SourcePattern
    headers: tuple[tuple[str, str], ...]

    def apply(self, path: str) -> list[tuple[str, str]]:
        params = self.pattern.match(path)
        if params is None:
            return []
        return [(fill(key, params), fill(value, params)) for key, value in self.headers]


@dataclass(frozen=True)
class ProjectConfig:
    """What this server reads from `vercel.json`."""

    functions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rewrites: tuple[Rewrite, ...] = ()
    headers: tuple[HeaderRule, ...] = ()

    def max_duration(self, file: str) -> float | None:
        """`maxDuration` for a function file: an exact key first, then glob keys in order."""
        entry = self.functions.get(file)
        if entry is None:
            entry = next(
                (v for k, v in self.functions.items() if fnmatch.fnmatchcase(file, k)), None
            )
        value = (entry or {}).get("maxDuration")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            return None
        return float(value)

    def response_headers(self, path: str) -> list[tuple[str, str]]:
        return [pair for rule in self.headers for pair in rule.apply(path)]

    def rewrite(self, path: str) -> tuple[str, list[tuple[str, str]]] | None:
        return next((r for rule in self.rewrites if (r := rule.apply(path)) is not None), None)


def parse_config(raw: Mapping[str, Any]) -> ProjectConfig:
    """Build a ProjectConfig from parsed `vercel.json`; a bad pattern raises ValueError."""
    return ProjectConfig(
        functions=dict(raw.get("functions") or {}),
        rewrites=tuple(
            Rewrite(compile_source(r["source"]), r["destination"]) for r in raw.get("rewrites", [])
        ),
        headers=tuple(
            HeaderRule(
                compile_source(h["source"]),
                tuple((str(x["key"]), str(x["value"])) for x in h.get("headers", [])),
            )
            for h in raw.get("headers", [])
        ),
    )


def load_config(path: Path) -> ProjectConfig:
    if not path.exists():
        return ProjectConfig()
    return parse_config(json.loads(path.read_text(encoding="utf-8")))


def discover_functions(root: Path) -> dict[str, str]:
    """Route path -> function file (relative, POSIX) for every deployable `api/**/*.py`."""
    routes: dict[str, str] = {}
    api = root / "api"
    if not api.is_dir():
        return routes
    for file in sorted(api.rglob("*.py")):
        relative = file.relative_to(root)
        if any(part.startswith(("_", ".")) for part in relative.parts):
            continue  # Vercel: files and folders starting with `_` or `.` are not functions
        route = "/" + relative.with_suffix("").as_posix()
        routes[route] = relative.as_posix()
        if relative.stem == "index":
            routes[route.removesuffix("/index") or "/"] = relative.as_posix()
    return routes


def static_file(public: Path, path: str) -> Path | None:
    """The file under `public/` that `path` names (`index.html` for a folder), or None."""
    parts = [p for p in path.split("/") if p]
    if any(p in ("..", ".") or "\\" in p or "\0" in p for p in parts):
        return None
    candidate = public.joinpath(*parts)
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


def rfc3339_after(seconds: float, now: datetime | None = None) -> str:
    """The deadline header value the platform would send for `seconds` from `now`."""
    moment = (now or datetime.now(UTC)) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the ASGI side ---------------------------------------------------------------------------


@dataclass
class Function:
    file: str
    app: ASGIApp
    max_duration: float | None


def import_function(root: Path, file: str) -> ASGIApp:
    """Import `file` the way vercel_runtime does (module name from its path) and take `app`."""
    name = file.removesuffix(".py").replace("/", ".")
    spec = importlib.util.spec_from_file_location(name, root / file)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {file}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    app = getattr(module, "app", None)
    if app is None or not callable(app):
        raise RuntimeError(f"{file} has no ASGI `app`")
    asgi: ASGIApp = getattr(app, "asgi", app)
    return asgi


class Lifespan:
    """Run each function's ASGI lifespan as uvicorn's `lifespan="auto"` would, one per app."""

    def __init__(self, apps: Sequence[ASGIApp]) -> None:
        self._apps = apps
        self._tasks: list[asyncio.Task[None]] = []
        self._inboxes: list[asyncio.Queue[Message]] = []
        self._replies: list[asyncio.Queue[Message]] = []

    async def startup(self) -> None:
        for app in self._apps:
            inbox: asyncio.Queue[Message] = asyncio.Queue()
            replies: asyncio.Queue[Message] = asyncio.Queue()
            self._tasks.append(asyncio.create_task(self._run(app, inbox, replies)))
            self._inboxes.append(inbox)
            self._replies.append(replies)
            await inbox.put({"type": "lifespan.startup"})
            reply = await replies.get()
            if reply["type"] == "lifespan.startup.failed":
                raise RuntimeError(f"lifespan startup failed: {reply.get('message', '')}")

    @staticmethod
    async def _run(
        app: ASGIApp, inbox: asyncio.Queue[Message], replies: asyncio.Queue[Message]
    ) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        with contextlib.suppress(Exception):  # "auto": an app without lifespan is fine
            await app(scope, inbox.get, replies.put)
        await replies.put({"type": "lifespan.unsupported"})

    async def shutdown(self) -> None:
        for inbox, replies, task in zip(self._inboxes, self._replies, self._tasks, strict=True):
            if task.done():
                continue
            await inbox.put({"type": "lifespan.shutdown"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replies.get(), 5)
            task.cancel()


class LocalPlatform:
    """The ASGI app uvicorn serves: Vercel's routing around the project's functions."""

    def __init__(
        self,
        root: Path,
        config: ProjectConfig,
        functions: Mapping[str, Function],
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.config = config
        self.functions = dict(functions)
        self.public = root / "public"
        self.lifespan = Lifespan([f.app for f in self.functions.values()])
        self.log = log or (lambda line: None)

    def resolve(self, path: str) -> Function | Path | None:
        return self.functions.get(path) or static_file(self.public, path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        extra = [(k.lower().encode(), v.encode()) for k, v in self.config.response_headers(path)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
                self.log(f"{scope['method']} {path} -> {message['status']}")
            await send(message)

        query = scope.get("query_string", b"")
        target = self.resolve(path)
        if target is None and (rewritten := self.config.rewrite(path)) is not None:
            destination, added = rewritten
            if urlsplit(destination).scheme:
                await _plain(send_with_headers, 502, "external rewrites are not emulated\n")
                return
            target = self.resolve(destination)
            if added:
                joined = b"&".join(p for p in (query, urlencode(added).encode()) if p)
                query = joined
        if target is None:
            await _plain(send_with_headers, 404, "404: NOT_FOUND\n")
        elif isinstance(target, Path):
            await _serve_static(scope, target, send_with_headers)
        else:
            await self._invoke(target, {**scope, "query_string": query}, receive, send_with_headers)

    async def _invoke(self, function: Function, scope: Scope, receive: Receive, send: Send) -> None:
        """Call a function as the runtime does: internal headers stripped, deadline set."""
        # Untyped package: through importlib, so mypy sees a module and no missing stubs.
        deadline = importlib.import_module("vercel_runtime.deadline")
        client = (scope.get("client") or ("127.0.0.1", 0))[0].encode()
        headers = [(k, v) for k, v in scope["headers"] if not k.startswith(INTERNAL_HEADER_PREFIX)]
        forwarded = [v for k, v in headers if k == b"x-forwarded-for"]
        headers = [(k, v) for k, v in headers if k not in _PLATFORM_SET_HEADERS]
        headers += [
            (b"x-forwarded-for", b", ".join([*forwarded, client])),
            (b"x-real-ip", client),
            (b"x-vercel-forwarded-for", client),
            (b"x-forwarded-proto", b"http"),
        ]
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        limit = function.max_duration
        token = deadline.set_deadline(rfc3339_after(limit) if limit else None)
        try:
            async with asyncio.timeout(limit):
                await function.app({**scope, "headers": headers}, receive, tracking_send)
        except TimeoutError:
            # The platform stops the invocation at maxDuration, whatever the function is doing.
            self.log(f"{function.file}: stopped at maxDuration={limit:g}s")
            if not started:
                await _plain(send, 504, "504: FUNCTION_INVOCATION_TIMEOUT\n")
        finally:
            deadline.reset_deadline(token)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.lifespan.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.lifespan.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


_PLATFORM_SET_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-real-ip", b"x-vercel-forwarded-for", b"x-forwarded-proto"}
)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve_static(scope: Scope, file: Path, send: Send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await _plain(send, 405, "405: METHOD_NOT_ALLOWED\n")
        return
    body = await asyncio.to_thread(file.read_bytes)
    kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    headers = [
        (b"content-type", kind.encode()),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"public, max-age=0, must-revalidate"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


# --- command line ----------------------------------------------------------------------------


def build_platform(
    root: Path, config_path: Path | None = None, log: Callable[[str], None] | None = None
) -> LocalPlatform:
    """Read the config, import every function (after the environment is final), compose."""
    config = load_config(config_path or root / "vercel.json")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # like the platform: `lib/` imports resolve from the root
    functions = {
        route: Function(file, import_function(root, file), config.max_duration(file))
        for route, file in discover_functions(root).items()
    }
    return LocalPlatform(root, config, functions, log)


def _banner_demo(base_url: str) -> str:
    rule = "=" * 72
    return (
        f"{rule}\n"
        "  DEMO MODE: no OPENAI_API_KEY is set, so replies are CANNED.\n"
        f"  A demo upstream on {base_url} plays OpenAI; nothing leaves this machine.\n"
        "  Set OPENAI_API_KEY (and OPENAI_BASE_URL for another provider) for real replies.\n"
        f"{rule}"
    )


def curl_line(url: str) -> str:
    return (
        f"curl -N {url}/api/generate -H 'Content-Type: application/json' "
        """-d '{"prompt":"Say hello"}'"""
    )


@dataclass(frozen=True)
class ServerLimits:
    """What the server itself enforces before a function sees a request.

    ``trusted_proxies`` (``--forwarded-allow-ips``) is empty by default, and then uvicorn's
    proxy-header rewriting is off: uvicorn's default trusts ``X-Forwarded-For`` from 127.0.0.1,
    so behind any same-host tunnel or proxy a caller could pick its own address (and so its own
    rate-limit identity) by rotating that header. Name the proxy to turn it on for it alone.
    """

    trusted_proxies: str = ""
    header_timeout: float = 10.0
    max_connections: int = 1000
    keep_alive: int = 5

    def uvicorn_settings(self) -> dict[str, Any]:
        from dev.guard import guarded

        settings: dict[str, Any] = {
            "proxy_headers": bool(self.trusted_proxies),
            "http": guarded(self.header_timeout, self.max_connections),
            "timeout_keep_alive": self.keep_alive,
        }
        if self.trusted_proxies:
            settings["forwarded_allow_ips"] = self.trusted_proxies
        return settings


async def serve(
    host: str,
    port: int,
    root: Path,
    config_path: Path | None,
    environ: MutableMapping[str, str],
    limits: ServerLimits | None = None,
) -> None:
    import uvicorn

    runner = None
    if not environ.get("OPENAI_API_KEY"):
        from dev.demo_upstream import start_demo_upstream

        _, runner, base_url = await start_demo_upstream()
        # Before any function is imported: the function reads its settings once, at import.
        environ["OPENAI_BASE_URL"] = base_url
        environ["OPENAI_API_KEY"] = "demo-placeholder-key"
        print(_banner_demo(base_url), flush=True)
    platform = build_platform(root, config_path, log=lambda line: print(line, flush=True))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown}:{bound}"
    for route, function in sorted(platform.functions.items()):
        limit = function.max_duration
        suffix = f" (maxDuration {limit:g}s)" if limit else ""
        print(f"  {route} -> {function.file}{suffix}", flush=True)
    if "/api/generate" in platform.functions:
        print(f"Try:\n  {curl_line(url)}", flush=True)
    print(f"Ready on {url}", flush=True)  # last: tests and scripts wait for this line
    config = uvicorn.Config(
        platform,
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=2,
        **(limits or ServerLimits()).uvicorn_settings(),
    )
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        if runner is not None:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="project directory")
    parser.add_argument(
        "--local-config", type=Path, default=None, help="use this file instead of vercel.json"
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default="",
        metavar="IPS",
        help="trust X-Forwarded-For from these proxy addresses (default: trust no one)",
    )
    parser.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds to receive request headers"
    )
    parser.add_argument(
        "--max-connections", type=int, default=1000, help="open connections before 503"
    )
    args = parser.parse_args(argv)
    limits = ServerLimits(args.forwarded_allow_ips, args.header_timeout, args.max_connections)
    started = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(args.host, args.port, args.root.resolve(), args.local_config, os.environ, limits)
        )
    print(f"stopped after {time.monotonic() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
