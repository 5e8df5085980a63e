"""A fake OpenAI-compatible upstream that streams like the real one, and misbehaves on cue.

One server, three jobs: the local server's upstream when no ``OPENAI_API_KEY`` is set (a fixed
reply at a realistic pace), the test suite's fake upstream (queued :class:`Scenario` faults, and a
:class:`SeenRequest` record of every request, including when the client hung up), and the
benchmark's upstream. It doubles as documentation of the protocol (docs/protocol.md section 3):

``POST /v1/chat/completions`` answers ``content-type: text/event-stream; charset=utf-8`` with::

    data: {"id":"chatcmpl-demo1","object":"chat.completion.chunk","created":1700000000,
           "model":"<echoed>","service_tier":"default","system_fingerprint":"fp_demo",
           "choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,
           "finish_reason":null}],"obfuscation":"Kq3v"}
    data: {... "choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,
           "finish_reason":null}],"obfuscation":"Kq3vZ9xW1bY"}
    data: {... "choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],
           "obfuscation":""}
    data: {... "choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12},
           "obfuscation":"Kq3vZ9x"}
    data: [DONE]

(each event ends with a blank line). Every chat chunk carries OpenAI's ``service_tier``,
``system_fingerprint``, ``logprobs: null`` and the ``obfuscation`` padding, a string of varying
length that differs from chunk to chunk, as OpenAI streams by default (and without it when the
request has ``stream_options.include_obfuscation: false``). ``POST /v1/completions``
is the same with ``"object":"text_completion"``, ``choices[0].text`` and ``"logprobs":null``,
no padding and no opening role chunk. The usage chunk comes only when the request has
``stream_options.include_usage: true``; then, as OpenAI does, every other chunk carries
``"usage":null``. JSON is compact and non-ASCII is sent raw (UTF-8), as OpenAI sends it, so a
character can straddle two writes.
``GET /v1/models`` lists a few models. A body that is not a JSON object, or lacks
``"stream": true``, gets a 400 in OpenAI's error shape. Any ``Authorization`` header (or none)
is accepted and recorded.

Beyond text, as the real APIs stream it (chat endpoint only):

- **tools**: a request with ``tools`` whose last message is a user message that mentions the
  tool (the last word of its name, ``weather`` for ``get_weather``), or whose ``tool_choice``
  is ``required`` or names it, gets a tool call instead of text: a chunk with
  ``delta.tool_calls[0]`` carrying ``index``, ``id``, ``type`` and ``function.name``
  (``arguments: ""``), then the arguments in fragments, then
  ``finish_reason: "tool_calls"``. The arguments fill the tool's JSON Schema with sample values
  (``Scenario.tool_arguments`` overrides them). A request whose last message is a ``tool``
  result gets a text reply that quotes it.
- **reasoning**: with ``reasoning_effort`` (other than ``none``) or ``Scenario.reasoning``, a
  thinking phase comes first, in ``delta.reasoning_content`` (DeepSeek, vLLM) or, with
  ``Scenario.reasoning_key="reasoning"``, ``delta.reasoning`` (OpenRouter, Groq).
- **images**: a last user message with ``image_url`` parts gets a reply that starts by saying
  how many images it saw.
- **structured output**: ``response_format`` ``json_schema`` gets a JSON document that fills
  the schema with sample values; ``json_object`` gets ``{"answer": ...}``.

Starting it under pytest: ``server = await aiohttp_server(demo.app)``, base URL
``str(server.make_url("/v1"))``. aiohttp 3.14's ``TestServer`` always turns on
``handler_cancellation``, which is what lets the server notice a client hanging up while it has
nothing to write (hanging, silent, stalled, gated); do not pass that kwarg yourself (it is a
duplicate-keyword ``TypeError``). Elsewhere use :func:`start_demo_upstream`, which turns it on.
When the server shuts down, handlers still waiting are cancelled, so a stalled stream never holds
up teardown; that is not counted as a client close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import socket
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDictProxy

from lib.config import RequestLimits
from lib.errors import RequestError, UpstreamStreamError
from lib.responses import Meta, ResponsesStream, convert

DEMO_REPLY = (
    "Hello! I am the demo upstream — a stand-in for a real model, streaming one token at a "
    "time. Schöne Grüße from the test bench 🚀. Set OPENAI_API_KEY to talk to a real model."
)
REASONING = "The user wants an answer. I will think it through briefly, then reply."
CREATED = 1700000000
FINGERPRINT = "fp_demo"
# OpenAI pads every chat chunk with a random ``obfuscation`` string of varying length (against
# side channels that read token lengths from packet sizes): the same, from a fixed cycle.
PADDING = tuple("Kq3vZ9xW1bYp7TnR"[:n] for n in (4, 11, 0, 7, 2, 15, 9, 1, 13, 5))
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
HUGE_PIECE = 64 * 1024
MODELS = ("demo-model", "gpt-4o-mini", "gpt-3.5-turbo-instruct")

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+")
_EOL = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded.", "server_error", None),
}


def tokenize(text: str) -> list[str]:
    """Split text the way a model emits it: words and punctuation runs, leading spaces attached.

    ``"".join(tokenize(t)) == t`` for every ``t``, so streaming the tokens reproduces the text.
    """
    return _TOKEN.findall(text)


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope, used for non-200 bodies and in-band stream errors."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def default_error(status: int) -> dict[str, Any]:
    """The body OpenAI sends with ``status`` (a generic one for statuses it has no text for)."""
    if status in _DEFAULT_ERRORS:
        message, error_type, code = _DEFAULT_ERRORS[status]
    else:
        message, error_type, code = HTTPStatus(status).phrase, "server_error", None
    return error_body(message, error_type, code=code)


@dataclass
class Scenario:
    """What the upstream does for one request; default = a normal, complete stream.

    ``error`` is the whole JSON document sent: the body of a non-200 answer (default:
    :func:`default_error`), or the data of the in-band event for ``ending="error"`` (default: a
    ``server_error`` envelope). A ``content_type`` other than an event stream makes a 200 answer
    one JSON object (the non-streamed completion), and a non-200 answer with a content type that
    is not JSON a small HTML page, as a wrong base URL would get. ``huge_line_bytes`` is the
    length of the ``data: ...`` line (without its line ending); that event comes before the
    ordinary content events and does not count towards ``after`` or ``gate_after``.
    ``gate_after=n`` waits after the n-th content event, before anything else is sent (including
    the ending). The huge line is written in 64 KiB pieces, so a 10 MB line costs the upstream
    no 10 MB buffer (and a memory measurement sees only the function's share).
    ``reset_before_headers`` reads the request, then aborts the connection with a TCP RST before
    answering anything (a crashed upstream or proxy). ``eof_gate`` holds the body's end (the
    chunked encoding's last chunk) after ``[DONE]`` until it is set, as a real upstream's last
    bytes may come a moment after its last event.
    """

    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = SSE_CONTENT_TYPE
    text: str | None = None
    tokens: list[str] | None = None
    pace: float | None = None
    hang_before_headers: bool = False
    reset_before_headers: bool = False
    silence_before_first: float = 0.0
    framing: Literal["lf", "crlf", "cr"] = "lf"
    write: Literal["event", "byte", "pairs"] = "event"
    after: int | None = None
    ending: Literal["done", "eof", "reset", "stall", "error"] = "done"
    finish_reason: str = "stop"
    huge_line_bytes: int = 0
    gate: asyncio.Event | None = None
    gate_after: int = 1
    reasoning: str | None = None
    reasoning_key: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    tool_arguments: str | None = None
    eof_gate: asyncio.Event | None = None


@dataclass
class SeenRequest:
    """What the upstream saw of one request, and how it ended.

    ``closed`` is set when the client closed the connection before the handler finished (never
    for the server's own ``reset`` or shutdown). ``events_sent`` counts every SSE event written
    to the socket so far, the opening role chunk and ``[DONE]`` included. ``peer`` is the
    client's address and port: two requests with the same one came on the same connection.
    """

    path: str
    headers: CIMultiDictProxy[str]
    json: Any
    body: bytes = b""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    events_sent: int = 0
    peer: Any = None


@dataclass(frozen=True)
class _Chunks:
    """Builds the chunk objects of one streamed reply in the requested API's shape."""

    chat: bool
    id: str
    model: str
    include_usage: bool
    padded: bool = True  # stream_options.include_obfuscation: false turns the padding off

    pads: Iterator[str] = field(default_factory=lambda: itertools.cycle(PADDING))

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = {"id": self.id, "object": kind, "created": CREATED, "model": self.model}
        if self.chat:
            chunk |= {"service_tier": "default", "system_fingerprint": FINGERPRINT}
        chunk["choices"] = choices
        if self.include_usage:
            chunk["usage"] = None
        if self.chat and self.padded:
            chunk["obfuscation"] = next(self.pads)  # a different padding string in every chunk
        return chunk

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return self._chat_choice(delta, finish_reason)
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def _chat_choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def opening(self) -> dict[str, Any] | None:
        if not self.chat:
            return None
        return self._envelope([self._chat_choice({"role": "assistant", "content": ""}, None)])

    def content(self, text: str) -> dict[str, Any]:
        return self._envelope([self._choice(text, None)])

    def delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return self._envelope([self._chat_choice(delta, None)])

    def tool_start(self, call_id: str, name: str) -> dict[str, Any]:
        function = {"name": name, "arguments": ""}
        call = {"index": 0, "id": call_id, "type": "function", "function": function}
        return self.delta({"tool_calls": [call]})

    def tool_arguments(self, fragment: str) -> dict[str, Any]:
        return self.delta({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})

    def finish(self, reason: str) -> dict[str, Any]:
        return self._envelope([self._choice(None, reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = self._envelope([])
        chunk["usage"] = _usage(prompt_tokens, completion_tokens)
        return chunk

    def whole(self, text: str, reason: str, prompt_tokens: int) -> dict[str, Any]:
        """The non-streamed answer, for a 200 that is not an event stream."""
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": reason}
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}
        kind = "chat.completion" if self.chat else "text_completion"
        usage = _usage(prompt_tokens, len(tokenize(text)))
        return {
            "id": self.id,
            "object": kind,
            "created": CREATED,
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }


class _EventWriter:
    """Frames events with the scenario's line ending and writes them at its granularity."""

    def __init__(self, resp: web.StreamResponse, scenario: Scenario, seen: SeenRequest) -> None:
        self._resp = resp
        self._eol = _EOL[scenario.framing]
        self._mode = scenario.write
        self._seen = seen
        self._pending: list[bytes] = []

    async def send(self, data: dict[str, Any] | str) -> None:
        text = data if isinstance(data, str) else _dumps(data)
        self._pending.append(b"data: " + text.encode() + self._eol + self._eol)
        if self._mode != "pairs" or len(self._pending) == 2:
            await self.flush()

    async def send_huge(self, before: str, filler: int, after: str) -> None:
        """One event whose data is ``before + "x" * filler + after``, written in pieces."""
        await self.flush()
        await self._resp.write(b"data: " + before.encode())
        piece = b"x" * HUGE_PIECE
        while filler > 0:
            await self._resp.write(piece[:filler])
            filler -= HUGE_PIECE
        await self._resp.write(after.encode() + self._eol + self._eol)
        self._seen.events_sent += 1

    async def flush(self) -> None:
        """Write what is pending; called before every wait so no event is held back by one."""
        if not self._pending:
            return
        blob, count = b"".join(self._pending), len(self._pending)
        self._pending.clear()
        if self._mode == "byte":
            for i in range(len(blob)):
                await self._resp.write(blob[i : i + 1])
        else:
            await self._resp.write(blob)
        self._seen.events_sent += count


class _ResponsesWriter(_EventWriter):
    """Writes the chat chunks of a reply as the Responses API's events (``/v1/responses``)."""

    def __init__(
        self, resp: web.StreamResponse, scenario: Scenario, seen: SeenRequest, chunks: _Chunks
    ) -> None:
        super().__init__(resp, scenario, seen)
        meta = Meta(chunks.id.replace("chatcmpl", "resp"), CREATED, chunks.model, {})
        self._stream = ResponsesStream(meta)
        self._pending.append(self._stream.open())

    async def send(self, data: dict[str, Any] | str) -> None:
        if data == "[DONE]":
            out = self._stream.close()
        elif isinstance(data, dict) and "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else None
            out = self._stream.fail(UpstreamStreamError(str(message))) or b""
        elif isinstance(data, dict):
            out = self._stream.chunk("", data)
        else:
            out = data.encode() + b"\n\n"
        if out:
            self._pending.append(out)
        if self._mode != "pairs" or len(self._pending) >= 2:
            await self.flush()


class DemoUpstream:
    """The fake upstream: an aiohttp app plus the scenario queue and the record of requests."""

    def __init__(
        self,
        *,
        pace: float = 0.03,
        reply: str = DEMO_REPLY,
        reasoning: str | None = None,
        tool_arguments: str | None = None,
    ) -> None:
        self.pace = pace
        self.reply = reply
        self.reasoning = REASONING if reasoning is None else reasoning  # the thinking phase
        self.tool_arguments = tool_arguments  # every tool call's arguments (default: sampled)
        self.seen: list[SeenRequest] = []
        self._scenarios: deque[Scenario] = deque()
        self._keyed: dict[str, deque[Scenario]] = {}
        self._arrivals: asyncio.Queue[SeenRequest] = asyncio.Queue()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._count = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._handle)
        self.app.router.add_post("/v1/completions", self._handle)
        self.app.router.add_post("/v1/responses", self._handle)
        self.app.router.add_get("/v1/models", self._handle)
        self.app.on_shutdown.append(self._cancel_handlers)

    def push(self, *scenarios: Scenario) -> None:
        """Queue scenarios; each valid completion request takes the next (none left: default)."""
        self._scenarios.extend(scenarios)

    def forget(self) -> None:
        """Drop the record of past requests (a long-running benchmark would otherwise grow it)."""
        self.seen.clear()
        while not self._arrivals.empty():
            self._arrivals.get_nowait()

    def push_for(self, prompt: str, *scenarios: Scenario) -> None:
        """Queue scenarios for requests whose prompt text is exactly ``prompt`` (they take these
        before the shared queue), so concurrent requests each get their own script."""
        self._keyed.setdefault(prompt, deque()).extend(scenarios)

    def _take(self, payload: dict[str, Any]) -> Scenario:
        key = _prompt_text(payload)
        keyed = self._keyed.get(key)
        if keyed:
            scenario = keyed.popleft()
            if not keyed:
                del self._keyed[key]
            return scenario
        return self._scenarios.popleft() if self._scenarios else Scenario()

    async def next_request(self) -> SeenRequest:
        """Wait for the next request not yet taken by a caller, in arrival order."""
        return await self._arrivals.get()

    async def _cancel_handlers(self, app: web.Application) -> None:
        for task in list(self._handlers):
            task.cancel()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = None
        seen = SeenRequest(request.path, request.headers, payload, body)
        seen.peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append(seen)
        self._arrivals.put_nowait(seen)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await self._respond(request, seen)
        except asyncio.CancelledError:
            # handler_cancellation cancels us once the connection is lost (transport gone);
            # a shutdown cancels us with the transport still open.
            transport = request.transport
            if transport is None or transport.is_closing():
                seen.closed.set()
            raise
        finally:
            self._handlers.discard(task)
            seen.finished.set()

    async def _respond(self, request: web.Request, seen: SeenRequest) -> web.StreamResponse:
        if request.method == "GET":
            models = [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "demo"} for m in MODELS
            ]
            return web.json_response({"object": "list", "data": models})
        payload = seen.json
        if not isinstance(payload, dict):
            message = "We could not parse the JSON body of your request: expected a JSON object."
            return web.json_response(error_body(message, "invalid_request_error"), status=400)
        responses = request.path.endswith("/responses")
        if responses:
            # The Responses API: the request read as the chat request it amounts to, the reply
            # written as Responses events (the same translators the function uses).
            try:
                payload = convert(payload, RequestLimits()).body
            except RequestError as error:
                body = error_body(error.message, "invalid_request_error", param=error.param)
                return web.json_response(body, status=400)
        if payload.get("stream") is not True:
            message = 'This demo upstream only streams: set "stream": true.'
            body = error_body(message, "invalid_request_error", param="stream")
            return web.json_response(body, status=400)

        scenario = self._take(payload)
        self._count += 1
        chat = responses or request.path.endswith("/chat/completions")
        model = payload.get("model")
        options = payload.get("stream_options")
        chunks = _Chunks(
            chat=chat,
            id=f"{'chatcmpl' if chat else 'cmpl'}-demo{self._count}",
            model=model if isinstance(model, str) else MODELS[0],
            include_usage=responses
            or (isinstance(options, dict) and options.get("include_usage") is True),
            padded=not (isinstance(options, dict) and options.get("include_obfuscation") is False),
        )
        plan = _plan(payload, scenario, self) if chat else _Plan(self.reply)
        if not chat and scenario.text is not None:
            plan.text = scenario.text
        text = plan.text
        tokens = tokenize(text) if scenario.tokens is None else scenario.tokens
        prompt_tokens = len(tokenize(_prompt_text(payload)))

        if scenario.hang_before_headers:
            await _forever()
        if scenario.reset_before_headers:
            _reset(request)
            return web.Response(status=500)  # never sent: the transport is gone
        if scenario.status != 200:
            return _error_response(scenario)
        headers = {**scenario.headers, "Content-Type": scenario.content_type}
        if not scenario.content_type.startswith("text/event-stream"):
            whole = chunks.whole("".join(tokens), scenario.finish_reason, prompt_tokens)
            return web.Response(body=_dumps(whole).encode(), headers=headers)

        huge = _huge(chunks, scenario.huge_line_bytes) if scenario.huge_line_bytes else None
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)  # sends the headers now: a StreamResponse does not hold them
        out = (
            _ResponsesWriter(resp, scenario, seen, chunks)
            if responses
            else _EventWriter(resp, scenario, seen)
        )
        try:
            await self._stream(scenario, chunks, tokens, prompt_tokens, huge, out, plan)
        except ConnectionResetError:  # a write found the client gone
            seen.closed.set()
            return resp
        if scenario.ending == "reset":
            _reset(request)
            return resp
        if scenario.eof_gate is not None:
            await scenario.eof_gate.wait()
        await resp.write_eof()
        return resp

    async def _stream(
        self,
        scenario: Scenario,
        chunks: _Chunks,
        tokens: list[str],
        prompt_tokens: int,
        huge: tuple[str, int, str] | None,
        out: _EventWriter,
        plan: _Plan,
    ) -> None:
        """Write the events up to the scenario's ending; a reset is left to the caller."""
        pace = self.pace if scenario.pace is None else scenario.pace
        if scenario.silence_before_first > 0:
            await asyncio.sleep(scenario.silence_before_first)
        opening = chunks.opening()
        if opening is not None:
            await out.send(opening)
        sent = 0
        if huge is not None:
            await out.send_huge(*huge)
            sent += 1
        for piece in tokenize(plan.reasoning):
            if pace > 0:
                await asyncio.sleep(pace)
            await out.send(chunks.delta({scenario.reasoning_key: piece}))
            sent += 1
        if plan.tool is not None:
            name, arguments = plan.tool
            await out.send(chunks.tool_start(f"call_{chunks.id}", name))
            for piece in tokenize(arguments):
                if pace > 0:
                    await asyncio.sleep(pace)
                await out.send(chunks.tool_arguments(piece))
                sent += 1
            tokens = []  # a tool call is the whole answer of this step
        count = len(tokens) if scenario.after is None else min(scenario.after, len(tokens))
        for i in range(count + 1):
            if scenario.gate is not None and i == scenario.gate_after:
                await out.flush()
                await scenario.gate.wait()
            if i == count:
                break
            if pace > 0:
                await asyncio.sleep(pace)
            await out.send(chunks.content(tokens[i]))
            sent += 1

        if scenario.ending == "done":
            reason = "tool_calls" if plan.tool is not None else scenario.finish_reason
            await out.send(chunks.finish(reason))
            if chunks.include_usage:
                await out.send(chunks.usage(prompt_tokens, sent))
            await out.send("[DONE]")
        elif scenario.ending == "error":
            await out.send(scenario.error or default_error(500))
        await out.flush()
        if scenario.ending == "stall":
            await _forever()


def _error_response(scenario: Scenario) -> web.Response:
    """OpenAI's JSON error; or, given another non-JSON ``content_type``, a bare HTML page such
    as a proxy or a wrong base URL answers with."""
    status = scenario.status
    if scenario.content_type == SSE_CONTENT_TYPE or "json" in scenario.content_type:
        body = _dumps(scenario.error or default_error(status))
        content_type = "application/json"
    else:
        title = f"{status} {HTTPStatus(status).phrase}"
        body = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
        content_type = scenario.content_type
    headers = {**scenario.headers, "Content-Type": content_type}
    return web.Response(status=status, body=body.encode(), headers=headers)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _prompt_text(payload: dict[str, Any]) -> str:
    """The request's text, for a deterministic ``prompt_tokens`` count."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return ""
    parts = [m.get("content") for m in messages if isinstance(m, dict)]
    return " ".join(p for p in parts if isinstance(p, str))


@dataclass
class _Plan:
    """What one chat reply holds besides the scenario's faults: text, a thinking phase, a call."""

    text: str
    reasoning: str = ""
    tool: tuple[str, str] | None = None  # (name, JSON arguments)


def _plan(payload: dict[str, Any], scenario: Scenario, demo: DemoUpstream) -> _Plan:
    messages = payload.get("messages")
    last: Any = messages[-1] if isinstance(messages, list) and messages else {}
    last = last if isinstance(last, dict) else {}
    reply = demo.reply
    plan = _Plan(reply)
    chosen = scenario.text is not None  # the scenario's text wins over the replies below
    effort = payload.get("reasoning_effort")
    if scenario.reasoning is not None:
        plan.reasoning = scenario.reasoning
    elif isinstance(effort, str) and effort != "none":
        plan.reasoning = demo.reasoning
    tools = payload.get("tools")
    if last.get("role") == "tool" and not chosen:
        plan.text = f"The tool answered: {last.get('content')}. That is my answer."
    elif isinstance(tools, list) and tools and payload.get("tool_choice") != "none":
        choice = payload.get("tool_choice")
        tool = _chosen_tool(tools, choice)
        forced = choice == "required" or isinstance(choice, dict)
        if tool is not None and (forced or _asked_for(tool[0], _text_of(last))):
            name, parameters = tool
            arguments = (
                scenario.tool_arguments or demo.tool_arguments or _dumps(_sample(parameters))
            )
            plan.tool = (name, arguments)
    fmt = payload.get("response_format")
    if chosen:
        plan.text = scenario.text or ""
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema")
        plan.text = _dumps(_sample(schema.get("schema") if isinstance(schema, dict) else None))
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        plan.text = _dumps({"answer": reply})
    images = _image_count(last)
    if images:
        plan.text = f"I see {images} image{'s' if images > 1 else ''}. " + plan.text
    return plan


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _asked_for(name: str, text: str) -> bool:
    """Whether the user's words call for the tool: its name's last word (``weather`` for
    ``get_weather``) appears in them. A real model decides; the demo needs a rule."""
    word = re.split(r"[_-]", name)[-1].lower()
    return bool(word) and word in text.lower()


def _chosen_tool(tools: list[Any], choice: Any) -> tuple[str, Any] | None:
    wanted = None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
    for tool in tools:
        function: Any = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        if wanted is None or function["name"] == wanted:
            return function["name"], function.get("parameters")
    return None


def _sample(schema: Any) -> Any:
    """A value that satisfies a (simple) JSON Schema: what the demo model "decides"."""
    if not isinstance(schema, dict):
        return {}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {key: _sample(value) for key, value in properties.items()}
    if kind == "array":
        return [_sample(schema.get("items"))]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "Paris" if kind == "string" else {}


def _image_count(message: dict[str, Any]) -> int:
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")


def _huge(chunks: _Chunks, line_bytes: int) -> tuple[str, int, str]:
    """A content chunk whose ``data: ...`` line is exactly ``line_bytes`` bytes of valid JSON,
    as (JSON before the content, number of ``x`` characters, JSON after it)."""
    before, after = _dumps(chunks.content("\0")).split("\\u0000")
    skeleton = len(b"data: ") + len(before.encode()) + len(after.encode())
    if line_bytes < skeleton:
        raise ValueError(f"huge_line_bytes must be at least {skeleton}, got {line_bytes}")
    return before, line_bytes - skeleton, after


async def _forever() -> None:
    """Wait until cancelled: the client leaving (handler_cancellation) or server shutdown."""
    await asyncio.get_running_loop().create_future()


def _reset(request: web.Request) -> None:
    """Abort with a TCP RST (SO_LINGER 0), not a FIN, as a crashed upstream or proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@contextlib.contextmanager
def refusing_base_url(host: str = "127.0.0.1") -> Iterator[str]:
    """A base URL whose port refuses connections (bound, never listening) while in use."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        yield f"http://{host}:{sock.getsockname()[1]}/v1"


async def start_demo_upstream(
    host: str = "127.0.0.1", port: int = 0, pace: float = 0.03
) -> tuple[DemoUpstream, web.AppRunner, str]:
    """Serve a :class:`DemoUpstream`; returns it, its runner (``await runner.cleanup()`` to
    stop) and the base URL ending in ``/v1``. Port 0 picks a free port."""
    demo = DemoUpstream(pace=pace)
    runner = web.AppRunner(demo.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return demo, runner, f"http://{shown}:{bound_port}/v1"


def main(argv: list[str] | None = None) -> None:
    """``python -m dev.demo_upstream --host 127.0.0.1 --port 8001 --pace 0.03``"""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--pace", type=float, default=0.03, help="seconds between tokens")
    args = parser.parse_args(argv)
    demo = DemoUpstream(pace=args.pace)
    # run_app prints the bound address ("Running on http://..."); the base URL is that + /v1.
    web.run_app(demo.app, host=args.host, port=args.port, handler_cancellation=True)


if __name__ == "__main__":
    main()
