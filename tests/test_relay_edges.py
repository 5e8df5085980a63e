"""Upstream streams that the demo upstream does not script: written byte for byte by a tiny
aiohttp server, relayed by the real function."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lib.config import load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, serve_asgi
from tests.streams import canonical_events, post

CHAT = (
    '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":%s}]}'
)


async def relay_raw(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    http: aiohttp.ClientSession,
    raw: bytes,
    body: dict[str, object] | None = None,
) -> bytes:
    async def upstream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(raw)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream)
    server = await aiohttp_server(app)
    settings = load_settings(
        {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": str(server.make_url("/v1"))}
    )
    url, stop = await serve_asgi(GenerateHandler(settings))
    try:
        resp = await post(
            http, url + "/api/generate", body or {"messages": [{"role": "user", "content": "x"}]}
        )
        assert resp.status == 200
        return await resp.read()
    finally:
        await stop()


async def test_finish_reason_then_close_without_done_is_complete(
    aiohttp_server: Callable[..., Awaitable[TestServer]], http: aiohttp.ClientSession
) -> None:
    raw = (
        "data: " + CHAT % ("Hi", "null") + "\n\ndata: " + CHAT % ("", '"stop"') + "\n\n"
    ).encode()
    events = canonical_events(await relay_raw(aiohttp_server, http, raw))
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"data: not json\n\n", "not valid JSON"),
        (b'data: {"choices": NaN}\n\n', "not valid JSON"),
        (b"data: [1, 2]\n\n", "not a JSON object"),
        (b'data: {"error": "quota"}\n\n', "mid-stream"),
    ],
)
async def test_malformed_upstream_events_end_in_band(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    http: aiohttp.ClientSession,
    raw: bytes,
    needle: str,
) -> None:
    first = ("data: " + CHAT % ("Hi", "null") + "\n\n").encode()
    events = canonical_events(await relay_raw(aiohttp_server, http, first + raw))
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hi"
    error = json.loads(events[-1])["error"]
    assert needle in error["message"]
    assert "[DONE]" not in events


async def test_comments_named_events_and_non_compact_json_come_out_canonical(
    aiohttp_server: Callable[..., Awaitable[TestServer]], http: aiohttp.ClientSession
) -> None:
    loose = json.dumps(json.loads(CHAT % ("Gr\\u00fc\\u00dfe", "null")), ensure_ascii=False)
    raw = (
        ": OPENROUTER PROCESSING\r\n\r\n"
        "event: message\r\nid: 7\r\ndata: " + loose + "\r\n\r\n"
        "data: " + CHAT % ("", '"stop"') + "\r\n\r\ndata: [DONE]\r\n\r\n"
    ).encode()
    events = canonical_events(await relay_raw(aiohttp_server, http, raw))
    assert events[0] == CHAT % ("Gr\\u00fc\\u00dfe", "null")  # compact, escaped, no id/event
    assert events[-1] == "[DONE]"


async def test_usage_chunk_converted_only_when_asked(
    aiohttp_server: Callable[..., Awaitable[TestServer]], http: aiohttp.ClientSession
) -> None:
    usage = (
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
        '"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
    )
    raw = (
        "data: " + CHAT % ("Hi", '"stop"') + "\n\ndata: " + usage + "\n\ndata: [DONE]\n\n"
    ).encode()
    plain = canonical_events(await relay_raw(aiohttp_server, http, raw, {"prompt": "x"}))
    assert [json.loads(e)["object"] for e in plain[:-1]] == ["text_completion"]
    asked = canonical_events(
        await relay_raw(
            aiohttp_server, http, raw, {"prompt": "x", "stream_options": {"include_usage": True}}
        )
    )
    last = json.loads(asked[-2])
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 3
    assert last["object"] == "text_completion"
