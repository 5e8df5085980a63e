"""What an open stream holds (issue 15: memory per stream): looked at in the function's own
process while a real upstream holds the stream open between two events."""

from __future__ import annotations

import asyncio
import gc
import json
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lib import translate
from lib.asgi import TIMER_CONTEXT, Exchange
from lib.config import load_settings
from lib.handler import GenerateHandler
from lib.request import GenerateRequest, UpstreamRequest
from lib.upstream import UpstreamStream
from tests.conftest import CANARY_KEY, serve_asgi
from tests.streams import post, read_until

ROOT = Path(translate.__file__).parent.parent
OURS = (str(ROOT / "lib"), str(ROOT / "api"))
CHUNK = (
    '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":%s}]}'
)


@pytest.fixture
async def held_open(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    http: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[], Awaitable[list[object]]]]:
    """Starts a stream whose upstream sent two plain chunks and waits, and returns the objects
    the collector tracks that did not exist before it (other tests' leftovers are not this
    stream's); the stream ends when the test returns. With a parameter, the function allows
    that origin (``ALLOWED_ORIGINS``) and the stream comes from it."""
    origin: str = getattr(request, "param", "")
    gate = asyncio.Event()

    async def upstream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for text in ("Hello", " world"):
            await response.write(f"data: {CHUNK % (text, 'null')}\n\n".encode())
        await gate.wait()
        await response.write(f"data: {CHUNK % ('', '"stop"')}\n\ndata: [DONE]\n\n".encode())
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream)
    server = await aiohttp_server(app)
    environ = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": str(server.make_url("/v1"))}
    if origin:
        environ["ALLOWED_ORIGINS"] = origin
    url, stop = await serve_asgi(GenerateHandler(load_settings(environ)))
    body = {"messages": [{"role": "user", "content": "a prompt " * 100}]}
    responses: list[aiohttp.ClientResponse] = []

    async def start() -> list[object]:
        before = {id(obj): obj for obj in gc.get_objects()}  # held: no id is reused meanwhile
        headers = {"Origin": origin} if origin else None
        resp = await post(http, url + "/api/generate", body, headers=headers)
        assert resp.status == 200
        if origin:
            assert resp.headers["Access-Control-Allow-Origin"] == origin
        await read_until(resp, b"world")  # both chunks relayed: the stream waits on the upstream
        responses.append(resp)
        return [obj for obj in gc.get_objects() if id(obj) not in before]

    yield start
    gate.set()
    for resp in responses:
        assert b"[DONE]" in await resp.read()
    await stop()


async def test_the_parsed_request_is_not_held_while_the_stream_runs(
    held_open: Callable[[], Awaitable[list[object]]],
) -> None:
    new = await held_open()
    assert [obj for obj in new if isinstance(obj, GenerateRequest)] == []


async def test_the_upstream_request_is_not_held_once_the_upstream_answered(
    held_open: Callable[[], Awaitable[list[object]]],
) -> None:
    """Its body is the whole prompt: a long chat history would be held for the stream's
    lifetime otherwise."""
    new = await held_open()
    assert [obj for obj in new if isinstance(obj, UpstreamRequest)] == []


async def test_the_template_chunk_keeps_the_modules_own_key_strings(
    held_open: Callable[[], Awaitable[list[object]]],
) -> None:
    new = await held_open()
    (translator,) = [obj for obj in new if isinstance(obj, translate.Translator)]
    assert isinstance(translator, translate.Translator)
    # A chat stream relayed as it is never needs the template's chunk parsed: none is held.
    assert translator.template._like is None
    like = translator.template.like  # what a format that asks for it gets
    assert like == json.loads(CHUNK % ("", "null"))  # the template's, its string left empty
    choice = like["choices"][0]
    for mapping in (like, choice, choice["delta"]):
        for key in mapping:
            assert key is translate._SHARED[key], key  # the same object, not an equal copy
    assert like["object"] is translate._SHARED["chat.completion.chunk"]


@pytest.mark.parametrize("held_open", ["", "https://app.example"], indirect=True)
async def test_an_open_stream_holds_only_the_relays_own_chain_of_coroutines(
    held_open: Callable[[], Awaitable[list[object]]],
) -> None:
    """One coroutine per layer that must stay suspended: no middleware or wrapper around the
    app (the log line and CORS are the handler's), no coroutine of ours around the disconnect
    watcher's receive(), no lease context without a stream limit. A new layer here costs every
    open stream its frame (about 0.3 KiB)."""
    new = await held_open()
    suspended = [
        obj
        for obj in new
        if isinstance(obj, types.CoroutineType)
        and obj.cr_code.co_filename.startswith(OURS)
        and obj.cr_frame is not None
    ]

    def chain_from(coroutine: types.CoroutineType[object, object, object]) -> list[str]:
        names = []
        awaited: object = coroutine
        while isinstance(awaited, types.CoroutineType):
            if awaited.cr_code.co_filename.startswith(OURS):
                names.append(awaited.cr_code.co_qualname)
            awaited = awaited.cr_await
        return names

    chain = max((chain_from(c) for c in suspended), key=len)
    assert chain == [
        "GenerateHandler.__call__",
        "relay",
        "UpstreamStream.read_before",
    ]
    # Besides the stream's chain, nothing of ours that the request started is waiting.
    others = sorted(c.cr_code.co_qualname for c in suspended if c.cr_code.co_qualname not in chain)
    assert others == []
    generators = [
        agen.ag_code.co_qualname
        for agen in new
        if isinstance(agen, types.AsyncGeneratorType)
        and agen.ag_code.co_filename.startswith(OURS)
        and agen.ag_frame is not None
    ]
    assert generators == []  # no lease to renew, so no lease context held open


async def test_the_relays_timers_share_one_context(
    held_open: Callable[[], Awaitable[list[object]]],
) -> None:
    """The read deadline and the write watchdog run in one empty context, instead of each
    copying the request's (one object per timer per stream)."""
    new = await held_open()
    ours = [
        handle
        for handle in new
        if isinstance(handle, asyncio.TimerHandle)
        and not handle.cancelled()
        and isinstance(handle._callback, types.MethodType)
        and isinstance(handle._callback.__self__, (Exchange, UpstreamStream))
    ]
    assert {type(h._callback.__self__) for h in ours} == {Exchange, UpstreamStream}
    assert all(h._context is TIMER_CONTEXT for h in ours)


async def test_an_open_stream_holds_no_closures_of_ours(
    held_open: Callable[[], Awaitable[list[object]]],
) -> None:
    """The request log's send wrapper is a slotted object and the retry callback is let go once
    the upstream answered: a closure and its cells are more per open stream."""
    new = await held_open()
    closures = [
        obj.__qualname__
        for obj in new
        if isinstance(obj, types.FunctionType) and obj.__code__.co_filename.startswith(OURS)
    ]
    assert closures == []
