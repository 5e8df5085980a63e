"""One request's life: method -> body -> validation -> upstream -> relay, and the app around it.

The handler is the ASGI app itself: it makes the request's log record (id and line) and applies
CORS in its own frame, with no middleware around it (a layer would be one more coroutine per
open stream, and one more call on every write).

Before the response starts, every failure is the JSON error envelope with its status; after,
the relay turns failures into the format's in-band error. A caller's mistake is never a 500,
and nothing here ever puts the key, a request header or a traceback into a response.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
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
from lib.clock import StreamClock
from lib.config import Settings
from lib.cors import CORSPolicy
from lib.deadline import invocation_deadline
from lib.errors import (
    APIError,
    BreakConnection,
    ConfigurationError,
    DeadlineExceeded,
    MethodNotAllowed,
    NotFound,
)
from lib.formats import Format, WholeResponse
from lib.limits import Admission, Limiter, client_key
from lib.log import (
    RequestLog,
    emit,
    id_header,
    logger,
    quiet_broken_connections,
    request_log,
    usage_counts,
    warn,
)
from lib.negotiate import check_fit, choose_format, requested_format, v1_route, v1_semantics
from lib.relay import clock_for, relay, translator_for
from lib.request import UpstreamRequest, build_upstream_request, parse_body, safety_identifier
from lib.resilience import open_upstream
from lib.retry import Target
from lib.translate import Translator
from lib.upstream import UpstreamClient, UpstreamStream

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
        started = asyncio.get_running_loop().time()
        log = request_log(scope)
        log.error_type = self.error.type
        exchange = Exchange(scope, receive, send, (id_header(log),))
        try:
            await exchange.respond_error(self.error)  # no CORS settings: its 500 needs none
        finally:
            _finish_log(log, exchange, started)


class GenerateHandler:
    """The ASGI application behind ``/api/generate``, for settings that loaded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = UpstreamClient(settings.upstream)
        self.cors = CORSPolicy(settings.cors.allowed_origins, max_age=settings.cors.max_age)
        quiet_broken_connections()
        p = settings.protection
        self.auth: Authenticator = build_authenticator(p, self.client.fetch)
        self.limiter = Limiter(p, max_duration=settings.stream.max_duration)
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
        if not settings.upstream.api_key:
            warn("OPENAI_API_KEY is not set; every request will fail with 500 until it is.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = asyncio.get_running_loop().time()
        log = request_log(scope)
        cors = self.cors
        preflight = cors.preflight_headers(scope) if scope.get("method") == "OPTIONS" else None
        extra = cors.response_headers(scope) if preflight is None else preflight
        exchange = Exchange(scope, receive, send, (id_header(log), *extra))
        try:
            if preflight is not None:  # from an allowed origin, to any path: answered here
                await exchange.start(204, [])
                await exchange.end()
                return
            admitted = await self._admit(exchange, log)
            if admitted is None:
                return
            upstream_request, fmt, admission = admitted
            del admitted
            # The stream runs in this frame, holding the admission's lease; then the admission
            # is settled. (A coroutine of its own would be one more frame per open stream, and
            # one more level that every event resumes through.)
            try:
                async with self.limiter.holding(admission), exchange:
                    limits = self.settings.stream
                    deadline = invocation_deadline(
                        limits, started, asyncio.get_running_loop().time()
                    )
                    cut_at = None if deadline is None else deadline - limits.deadline_margin
                    stream = await self._open(upstream_request, log, cut_at)
                    del upstream_request  # the upstream body is the whole prompt: not kept
                    upstream = self.settings.upstream
                    clock = clock_for(
                        limits, idle=upstream.idle_timeout, started=started, cut_at=cut_at
                    )
                    translator = translator_for(fmt, upstream, limits)
                    whole = fmt if isinstance(fmt, WholeResponse) else None
                    if whole is not None:
                        whole.accepted = True
                    try:
                        await relay(stream, translator, exchange, clock, admission.headers, whole)
                    finally:
                        _record_stream(log, translator, clock)
            finally:
                # The response starts only once the upstream accepted the request (it may
                # charge); a whole answer starts later, so its format says when.
                opened = exchange.started or (isinstance(fmt, WholeResponse) and fmt.accepted)
                log.tokens_charged = await self.limiter.finish(
                    admission,
                    opened=opened,
                    usage=log.usage,
                    events=log.events,
                    unknown=exchange.stalled,
                )
        except APIError as error:
            log.error_type = error.type
            if not exchange.started:
                await exchange.respond_error(error, self._allow_header(error))
        except ClientDisconnected:
            pass
        except ClientStalled:
            # Nothing more can be written to a caller that stopped reading: drop the connection.
            log.error_type = "client_stalled"
            raise BreakConnection from None
        except BreakConnection:
            raise
        except Exception:
            logger.exception("unexpected error in request %s", log.request_id)
            log.error_type = "server_error"
            if not exchange.started:
                failure = APIError("The function failed unexpectedly; see its logs.")
                await exchange.respond_error(failure)
            else:
                raise
        finally:
            _finish_log(log, exchange, started)

    @staticmethod
    def _allow_header(error: APIError) -> list[Header]:
        if not isinstance(error, MethodNotAllowed) or "Allow" in error.headers:
            return []
        return [(b"allow", ALLOW)]

    async def _v1(self, exchange: Exchange, route: str, model: str) -> None:
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
            await exchange.start(204, [(b"allow", V1_ALLOW)])
            await exchange.end()
            return
        if method != "GET":
            raise MethodNotAllowed(
                f"Use GET to list models (got {method}).", headers={"Allow": "GET, OPTIONS"}
            )
        allowed = self.settings.request.models
        self._check_key()
        scope = exchange.scope
        await self.auth.authenticate(header(scope, b"authorization"), header(scope, b"origin"))
        if route == "models":
            body: dict[str, Any] = {
                "object": "list",
                "data": [_model(name) for name in sorted(allowed)],
            }
        elif model in allowed:
            body = _model(model)
        else:
            raise NotFound(f"The model {model!r} does not exist here.", param="model")
        await exchange.respond(200, json.dumps(body, separators=(",", ":")).encode())

    async def _admit(
        self, exchange: Exchange, log: RequestLog
    ) -> tuple[UpstreamRequest, Format, Admission] | None:
        """Route, authenticate, read and check the body, and pass the limits: what to send
        upstream, or None for a request answered here (OPTIONS, ``/api/v1/models``). It returns
        before the stream starts, so nothing it made is held while the stream runs (its frame
        would be, one more per open stream)."""
        route = v1_route(exchange.scope.get("query_string", b""))
        if route is not None and route[0] != RESPONSES_ROUTE:
            await self._v1(exchange, *route)
            return None
        method = exchange.scope.get("method", "")
        if method == "OPTIONS":
            await exchange.start(204, [(b"allow", ALLOW)])
            await exchange.end()
            return None
        if method != "POST":
            raise MethodNotAllowed(f"Use POST to call this endpoint (got {method}).")
        settings = self.settings
        limits = settings.request
        self._check_key()
        scope = exchange.scope
        caller = await self.auth.authenticate(
            header(scope, b"authorization"), header(scope, b"origin")
        )
        query = scope.get("query_string", b"")
        requested_format(query)  # a bad format parameter is a 400 before the body is read
        check_json_content_type(exchange.scope)
        raw = await exchange.read_body(limits.body_limit, limits.body_read_timeout)
        fmt: Format
        if route is not None:  # /api/v1/responses (lib/responses.py)
            from lib import responses

            request, fmt = responses.parse(raw, limits, query, int(time.time()))
        else:
            request = parse_body(raw, limits, stream_default=not v1_semantics(query))
            accept = header(exchange.scope, b"accept")
            fmt = choose_format(query, request, accept, settings.output.default_format)
            check_fit(request, fmt.name)
        log.shape, log.format, log.model = request.shape, fmt.name, request.model
        if settings.output.log_prompts:
            log.prompt = request.text_for_log()
        safety_id = None
        if caller.client_id is not None:  # authenticated: trace abuse to a user, hashed
            secret = settings.protection.auth_signing_secret
            safety_id = safety_identifier(caller.client_id, secret)
        if settings.upstream.api == "responses":
            from lib.responses_upstream import build_responses_request

            upstream_request = build_responses_request(
                request, settings.upstream, safety_id=safety_id
            )
        else:
            upstream_request = build_upstream_request(
                request, settings.upstream, safety_id=safety_id
            )
        p = settings.protection
        log.client = client_key(scope, p.trust_proxy_header, caller.client_id, p.ipv6_prefix)
        admission = await self.limiter.admit(log.client, request)
        return upstream_request, fmt, admission

    async def _open(
        self, upstream_request: UpstreamRequest, log: RequestLog, cut_at: float | None
    ) -> UpstreamStream:
        """The upstream's accepted stream (with retries and fallbacks), before the invocation
        deadline; a Responses upstream's stream is read as chat chunks."""
        endpoint = upstream_request.endpoint
        try:
            async with asyncio.timeout_at(cut_at):
                stream = await open_upstream(
                    self.client,
                    upstream_request,
                    self.settings.upstream,
                    cut_at=cut_at,
                    on_attempt=functools.partial(_note_attempt, log),
                )
        except TimeoutError:
            raise DeadlineExceeded(
                "The upstream did not answer before the function's time limit."
            ) from None
        if endpoint == "responses":
            from lib.responses_upstream import ResponsesUpstream

            return ResponsesUpstream(stream, self.settings.upstream.max_line_bytes)
        return stream

    def _check_key(self) -> None:
        """The 500 that says to set the provider key, before any work for a request."""
        if not self.settings.upstream.api_key:
            raise ConfigurationError(
                "The server has no OPENAI_API_KEY configured. Set the OPENAI_API_KEY environment "
                "variable for this function and redeploy."
            )

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


def _finish_log(log: RequestLog, exchange: Exchange, started: float) -> None:
    """The request's log line, written as it ends: what the exchange sent, and how long it
    took."""
    log.status, log.bytes = exchange.status, exchange.bytes_sent
    log.client_disconnected = exchange.disconnected
    log.duration_ms = round((asyncio.get_running_loop().time() - started) * 1000, 2)
    emit(log)


def _note_attempt(log: RequestLog, target: Target) -> None:
    """One attempt at an upstream target, for the log line."""
    log.attempts += 1
    log.upstream = target.name


def _record_stream(log: RequestLog, translator: Translator, clock: StreamClock) -> None:
    """What the stream said and when, into the log line (and the limiter's settlement)."""
    said = translator.said
    log.events, log.finish_reason = said.events, said.finish_reason
    log.usage = usage_counts(said.usage)
    if said.failure is not None:
        log.error_type = said.failure
    log.first_upstream_byte_ms = clock.ms(clock.first_data)
    log.first_event_ms = clock.ms(clock.first_write)
