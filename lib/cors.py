"""CORS for front ends hosted on other origins: ASGI middleware over an exact allowlist.

Like Starlette's ``CORSMiddleware``, it answers preflights itself and adds the headers to every
other response on its way out, and the headers for each allowed origin are built when the
function starts, so a request costs one dict look-up. The rules (Fetch standard, CORS protocol):

- an allowed ``Origin`` gets ``Access-Control-Allow-Origin`` with that exact origin (never
  ``*``), and ``Access-Control-Expose-Headers`` so scripts can read ``X-Request-Id`` and the
  rate-limit headers; this goes on every response, errors and streams included;
- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an
  allowed origin also gets the allowed methods and headers and a max-age;
- an origin not on the list gets no CORS headers at all, so the browser blocks the read;
- when a list is configured every response carries ``Vary: Origin``: the answer depends on the
  origin, and a shared cache must not serve one origin's answer to another.

No credentials mode (``Access-Control-Allow-Credentials``): the function uses no cookies, and an
``Authorization`` header is allowed as a plain request header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

from lib.asgi import App, Header, Message, Receive, Scope, Send, header
from lib.config import CORSSettings

ALLOW_METHODS = b"GET, POST, OPTIONS"  # GET: /api/v1/models
# user-agent: the AI SDK sets it on every request (withUserAgentSuffix), and browsers that let
# scripts set it (Firefox) then ask for it in the preflight; Chromium drops it silently.
ALLOW_HEADERS = b"accept, authorization, content-type, user-agent"
EXPOSE_HEADERS = (
    b"x-request-id, retry-after, ratelimit, ratelimit-policy, ratelimit-limit, "
    b"ratelimit-remaining, ratelimit-reset"
)

Headers = tuple[Header, ...]  # precomputed, so immutable


class CORSPolicy:
    """The precomputed CORS headers for a set of exact origins."""

    def __init__(self, origins: Iterable[str], *, max_age: int = 600) -> None:
        self.origins = frozenset(origins)
        vary: Headers = ((b"vary", b"Origin"),) if self.origins else ()
        self._vary = vary
        self._simple: dict[str, Headers] = {}
        self._preflight: dict[str, Headers] = {}
        for origin in self.origins:
            allow = (b"access-control-allow-origin", origin.encode("ascii"))
            expose = (b"access-control-expose-headers", EXPOSE_HEADERS)
            self._simple[origin] = (allow, expose, *vary)
            self._preflight[origin] = (
                allow,
                (b"access-control-allow-methods", ALLOW_METHODS),
                (b"access-control-allow-headers", ALLOW_HEADERS),
                (b"access-control-max-age", str(max_age).encode("ascii")),
                *vary,
            )

    def response_headers(self, scope: Scope) -> Headers:
        """Headers for an ordinary (non-preflight) response to this request."""
        origin = header(scope, b"origin")
        if origin is None:
            return self._vary
        return self._simple.get(origin, self._vary)

    def preflight_headers(self, scope: Scope) -> Headers | None:
        """Headers for a preflight from an allowed origin; ``None`` if this is no preflight or
        the origin is not allowed (then it is answered as a plain ``OPTIONS``)."""
        if header(scope, b"access-control-request-method") is None:
            return None
        origin = header(scope, b"origin")
        return None if origin is None else self._preflight.get(origin)

    def wrap(self, scope: Scope, send: Send) -> Send:
        """``send`` with this request's CORS headers added to the response start."""
        extra = self.response_headers(scope)
        if not extra:
            return send

        def send_with_cors(message: Message) -> Awaitable[None]:  # the server's awaitable
            if message["type"] == "http.response.start":
                names = {name for name, _ in extra}
                kept = [(k, v) for k, v in message.get("headers", ()) if k not in names]
                message = {**message, "headers": [*kept, *extra]}
            return send(message)

        return send_with_cors


class CORSMiddleware:
    """ASGI middleware: preflights from allowed origins answered here (204, no body); every
    other request passes to ``app`` with its CORS headers added to the response start. A
    preflight from an origin not on the list is a plain ``OPTIONS`` for the app to answer."""

    def __init__(self, app: App, settings: CORSSettings) -> None:
        self.app = app
        self.policy = CORSPolicy(settings.allowed_origins, max_age=settings.max_age)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":
            preflight = self.policy.preflight_headers(scope)
            if preflight is not None:
                await send({"type": "http.response.start", "status": 204, "headers": preflight})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        await self.app(scope, receive, self.policy.wrap(scope, send))
