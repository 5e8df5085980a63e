"""The ``rewrites`` of ``vercel.json`` in front of the function, for tests of the rewritten paths.

A minimal stand-in for the platform's routing (and for ``dev/serve.py``, which does the full
job): literal ``source`` paths only; the destination's query is merged into the request's, as
Vercel does, and the function sees the requested path. ``/api/generate`` itself passes through;
anything else is a 404.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from lib.asgi import Receive, Scope, Send
from lib.config import PROJECT_ROOT

FUNCTION_PATH = "/api/generate"


class Rewrites:
    def __init__(self, app: Any, config: dict[str, Any] | None = None) -> None:
        if config is None:
            config = json.loads((PROJECT_ROOT / "vercel.json").read_text(encoding="utf-8"))
        self.app = app
        self.routes: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        for rule in config.get("rewrites", []):
            target = urlsplit(rule["destination"])
            self.routes[rule["source"]] = (target.path, parse_qsl(target.query))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, extra = self.routes.get(scope["path"], (scope["path"], []))
        if path != FUNCTION_PATH:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        merged = urlencode([*query, *extra]).encode("latin-1")
        await self.app({**scope, "query_string": merged}, receive, send)
