"""CORS for front ends hosted on other origins: the headers for an exact allowlist.

As Starlette's ``CORSMiddleware`` does, the handler answers preflights itself and adds the
headers to every other response (lib/handler.py, in its own frame: no layer per open stream);
the headers for each allowed origin are built when the function starts, so a request costs one
dict look-up. The rules (Fetch standard, CORS protocol):

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

from collections.abc import Iterable

from lib.asgi import Header, Scope, header

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
        if not self.origins:
            return ()
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
