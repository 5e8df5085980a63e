"""One request's life: method -> body -> validation -> upstream -> relay -> one log line.

Before the response starts, every failure is the JSON error envelope with its status; after,
the relay turns failures into the format's in-band error. A caller's mistake is never a 500,
and nothing here ever puts the key, a request header or a traceback into a response.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from lib.asgi import (
    ClientDisconnected,
    ClientStalled,
    Exchange,
    Header,
    Receive,
    Scope,
    Send,
    check_json_content_type,
    header,
)
from lib.auth import Authenticator, build_authenticator
from lib.config import Settings
from lib.cors import CORSPolicy
from lib.deadline import invocation_deadline
from lib.errors import (
    APIError,
    ConfigurationError,
    DeadlineExceeded,
    MethodNotAllowed,
    NotFound,
)
from lib.formats import Format, WholeResponse
from lib.limits import Limiter, client_key
from lib.log import RequestLog, emit, logger, warn
from lib.negotiate import check_fit, choose_format, requested_format, v1_route, v1_semantics
from lib.relay import (
    BreakConnection,
    clock_for,
    quiet_broken_connections,
    relay,
    relay_whole,
    translator_for,
)
from lib.request import (
    UpstreamRequest,
    body_limit,
    build_upstream_request,
    parse_body,
    safety_identifier,
)
from lib.resilience import open_upstream
from lib.upstream import UpstreamClient

ALLOW = b"OPTIONS, POST"
# lib.responses.ROUTE, spelled here: lib.responses and lib.responses_upstream are imported only
# when a Responses request (or UPSTREAM_API=responses) needs them (cold start, issue 15).
RESPONSES_ROUTE = "responses"
V1_ALLOW = b"GET, OPTIONS"


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "streaming-function"}


class Misconfigured:
    """The app a broken environment gets: every request is the 500 that names the variable to
    fix (the import must not fail: the platform would turn that into an opaque error)."""

    def __init__(self, problem: str) -> None:
        self.error = ConfigurationError(
            f"The function is misconfigured: {problem}. Fix the environment variable and redeploy."
        )
        warn(f"The function is misconfigured: {problem}.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = uuid.uuid4().hex
        log = RequestLog(request_id=request_id, method=scope.get("method", ""))
        log.error_type = self.error.type
        exchange = Exchange(scope, receive, send)
        try:
            await exchange.respond_error(self.error, [(b"x-request-id", request_id.encode())])
        finally:
            log.status = exchange.status
            emit(log)


class GenerateHandler:
    """The ASGI application behind ``/api/generate``, for settings that loaded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = UpstreamClient(settings)
        self.cors = CORSPolicy(settings.allowed_origins, max_age=settings.cors_max_age)
        quiet_broken_connections()
        p = settings.protection
        self.auth: Authenticator = build_authenticator(p, self.client.fetch)
        self.limiter = Limiter(p, max_duration=settings.max_duration)
        if not self.auth.enabled and not p.rate_limit:
            warn(
                "UNPROTECTED: this function spends your provider key for anyone who finds "
                "its URL: none of AUTH_TOKENS, AUTH_JWT_SECRET, AUTH_JWKS_URL or RATE_LIMIT "
                "is set. See docs/protection.md."
            )
        if p.auth_signing_secret is not None:
            warn(
                "AUTH_SIGNING_SECRET (v1 tokens) is deprecated: mint HS256 JWTs with "
                "AUTH_JWT_SECRET instead. See docs/protection.md, Migrating from v1 tokens."
            )
        if not settings.openai_api_key:
            warn("OPENAI_API_KEY is not set; every request will fail with 500 until it is.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        request_id = uuid.uuid4().hex
        log = RequestLog(request_id=request_id, method=scope.get("method", ""))
        id_header = (b"x-request-id", request_id.encode("ascii"))
        preflight = self.cors.preflight_headers(scope) if log.method == "OPTIONS" else None
        if preflight is None:
            send = self.cors.wrap(scope, send)
        exchange = Exchange(scope, receive, send)
        try:
            if preflight is not None:
                await exchange.start(204, [*preflight, id_header])
                await exchange.end()
            else:
                await self._handle(exchange, log, id_header, started)
        except APIError as error:
            log.error_type = error.type
            if not exchange.started:
                await exchange.respond_error(error, [id_header, *self._allow_header(error)])
        except ClientDisconnected:
            pass
        except ClientStalled:
            # Nothing more can be written to a caller that stopped reading: drop the connection.
            log.error_type = "client_stalled"
            raise BreakConnection from None
        except BreakConnection:
            raise
        except Exception:
            logger.exception("unexpected error in request %s", request_id)
            log.error_type = "server_error"
            if not exchange.started:
                failure = APIError("The function failed unexpectedly; see its logs.")
                await exchange.respond_error(failure, [id_header])
            else:
                raise
        finally:
            log.status = exchange.status
            log.bytes = exchange.bytes_sent
            log.client_disconnected = exchange.disconnected
            log.duration_ms = round((loop.time() - started) * 1000, 2)
            emit(log)

    @staticmethod
    def _allow_header(error: APIError) -> list[Header]:
        if not isinstance(error, MethodNotAllowed) or "Allow" in error.headers:
            return []
        return [(b"allow", ALLOW)]

    async def _v1(self, exchange: Exchange, route: str, model: str, id_header: Header) -> None:
        """``GET /api/v1/models`` and ``/api/v1/models/{id}`` in the OpenAI shape (the
        deployment's allowed models), and the JSON 404 for every other ``/api/v1`` path."""
        path = exchange.scope.get("path", "/api/v1")
        if route not in ("models", "model"):
            raise NotFound(
                f"There is no {path} here: this function serves /api/v1/chat/completions, "
                "/api/v1/completions, /api/v1/responses and /api/v1/models."
            )
        method = exchange.scope.get("method", "")
        if method == "OPTIONS":
            await exchange.start(204, [(b"allow", V1_ALLOW), id_header])
            await exchange.end()
            return
        if method != "GET":
            raise MethodNotAllowed(
                f"Use GET to list models (got {method}).", headers={"Allow": "GET, OPTIONS"}
            )
        settings = self.settings
        self._api_key()
        scope = exchange.scope
        await self.auth.authenticate(header(scope, b"authorization"), header(scope, b"origin"))
        if route == "models":
            body: dict[str, Any] = {
                "object": "list",
                "data": [_model(name) for name in sorted(settings.allowed_models)],
            }
        elif model in settings.allowed_models:
            body = _model(model)
        else:
            raise NotFound(f"The model {model!r} does not exist here.", param="model")
        await exchange.respond(200, json.dumps(body, separators=(",", ":")).encode(), [id_header])

    async def _handle(
        self,
        exchange: Exchange,
        log: RequestLog,
        id_header: Header,
        started: float,
    ) -> None:
        route = v1_route(exchange.scope.get("query_string", b""))
        if route is not None and route[0] != RESPONSES_ROUTE:
            await self._v1(exchange, *route, id_header)
            return
        method = exchange.scope.get("method", "")
        if method == "OPTIONS":
            await exchange.start(204, [(b"allow", ALLOW), id_header])
            await exchange.end()
            return
        if method != "POST":
            raise MethodNotAllowed(f"Use POST to call this endpoint (got {method}).")
        settings, client, api_key = self.settings, self.client, self._api_key()
        scope = exchange.scope
        caller = await self.auth.authenticate(
            header(scope, b"authorization"), header(scope, b"origin")
        )
        query = scope.get("query_string", b"")
        requested_format(query)  # a bad format parameter is a 400 before the body is read
        check_json_content_type(exchange.scope)
        raw = await exchange.read_body(body_limit(settings), settings.body_read_timeout)
        fmt: Format
        if route is not None:  # /api/v1/responses (lib/responses.py)
            from lib import responses

            request, fmt = responses.parse(raw, settings, query, int(time.time()))
        else:
            request = parse_body(raw, settings, stream_default=not v1_semantics(query))
            accept = header(exchange.scope, b"accept")
            fmt = choose_format(query, request, accept, settings.default_format)
            check_fit(request, fmt.name)
        log.shape, log.format, log.model = request.shape, fmt.name, request.model
        if settings.log_prompts:
            log.prompt = request.text_for_log()
        safety_id = None
        if caller.client_id is not None:  # authenticated: trace abuse to a user, hashed
            secret = settings.protection.auth_signing_secret
            safety_id = safety_identifier(caller.client_id, secret)
        if settings.upstream_api == "responses":
            from lib.responses_upstream import build_responses_request

            upstream_request = build_responses_request(request, settings, safety_id=safety_id)
        else:
            upstream_request = build_upstream_request(request, settings, safety_id=safety_id)
        p = settings.protection
        log.client = client_key(scope, p.trust_proxy_header, caller.client_id, p.ipv6_prefix)
        admission = await self.limiter.admit(log.client, request)
        try:
            async with self.limiter.holding(admission):
                await self._stream(
                    exchange,
                    log,
                    settings,
                    client,
                    api_key,
                    upstream_request,
                    fmt,
                    [id_header, *admission.headers],
                    started,
                )
        finally:
            # The response starts only once the upstream accepted the request (it may charge);
            # a whole answer starts later, so its format says when the upstream accepted.
            opened = exchange.started or (isinstance(fmt, WholeResponse) and fmt.accepted)
            log.tokens_charged = await self.limiter.finish(
                admission,
                opened=opened,
                usage=log.usage,
                events=log.events,
                unknown=exchange.stalled,
            )

    async def _stream(
        self,
        exchange: Exchange,
        log: RequestLog,
        settings: Settings,
        client: UpstreamClient,
        api_key: str,
        upstream_request: UpstreamRequest,
        fmt: Format,
        headers: list[Header],
        started: float,
    ) -> None:
        """Call upstream and relay its stream within the invocation's deadline."""
        loop = asyncio.get_running_loop()
        deadline = invocation_deadline(settings, started, loop.time())
        cut_at = None if deadline is None else deadline - settings.deadline_margin
        async with exchange:
            try:
                async with asyncio.timeout_at(cut_at):
                    stream = await open_upstream(
                        client, upstream_request, settings, api_key, log, cut_at
                    )
            except TimeoutError:
                raise DeadlineExceeded(
                    "The upstream did not answer before the function's time limit."
                ) from None
            if upstream_request.endpoint == "responses":
                from lib.responses_upstream import ResponsesUpstream

                stream = ResponsesUpstream(stream, settings.max_line_bytes)
            clock = clock_for(settings, started=started, cut_at=cut_at)
            translator = translator_for(fmt, settings)
            if isinstance(fmt, WholeResponse):
                fmt.accepted = True
                await relay_whole(stream, translator, fmt, exchange, log, clock, headers)
                return
            await relay(stream, translator, exchange, log, clock, headers)

    def _api_key(self) -> str:
        """The provider key, or the 500 that says to set it."""
        if not self.settings.openai_api_key:
            raise ConfigurationError(
                "The server has no OPENAI_API_KEY configured. Set the OPENAI_API_KEY environment "
                "variable for this function and redeploy."
            )
        return self.settings.openai_api_key

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await _lifespan(receive, send, self.client.close, self.limiter.close)


async def _lifespan(receive: Receive, send: Send, *closers: Callable[[], Awaitable[None]]) -> None:
    """ASGI lifespan: nothing to start; at shutdown, close what the app holds."""
    while True:
        message: Any = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for close in closers:
                await close()
            await send({"type": "lifespan.shutdown.complete"})
            return
