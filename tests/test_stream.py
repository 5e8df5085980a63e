"""End to end: the function behind real uvicorn, the demo upstream on a real server, a real
HTTP client reading the bytes as they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from dev.demo_upstream import DEMO_REPLY, DemoUpstream, Scenario, tokenize
from tests.conftest import CANARY_KEY, Function
from tests.streams import (
    canonical_events,
    chat_text,
    chunks,
    completion_text,
    post,
)

MakeFunction = Callable[..., Awaitable[Function]]


async def test_events_reach_the_client_before_the_upstream_sends_the_next(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=1))
    resp = await post(http, function.url, {"prompt": "hi"})
    assert resp.status == 200
    received = b""
    first = b'"text":"' + tokenize(DEMO_REPLY)[0].encode() + b'"'
    while first not in received:
        piece = await asyncio.wait_for(resp.content.readany(), 5)
        assert piece, "stream ended before the first token"
        received += piece
    # The upstream is still holding its second content event: what we hold came through alone.
    assert not gate.is_set()
    assert demo.seen[0].events_sent == 2  # role chunk + first token
    gate.set()
    received += await resp.content.read()
    assert completion_text(canonical_events(received)) == DEMO_REPLY


async def test_prompt_gets_completion_chunks_and_done(
    function: Function, http: aiohttp.ClientSession
) -> None:
    resp = await post(http, function.url, {"prompt": "Say hello"})
    events = canonical_events(await resp.read())
    assert events[-1] == "[DONE]"
    parsed = chunks(events)
    assert all(c["object"] == "text_completion" for c in parsed)
    assert all(c["choices"] for c in parsed), "a chunk without choices breaks the classic helper"
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert completion_text(events) == DEMO_REPLY


async def test_messages_get_chat_chunks_and_usage_only_when_asked(
    function: Function, http: aiohttp.ClientSession
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    plain = canonical_events(await (await post(http, function.url, body)).read())
    assert all(c["object"] == "chat.completion.chunk" for c in chunks(plain))
    assert chat_text(plain) == DEMO_REPLY
    assert not any("usage" in c and not c["choices"] for c in chunks(plain))

    body["stream_options"] = {"include_usage": True}
    with_usage = canonical_events(await (await post(http, function.url, body)).read())
    usage = [c for c in chunks(with_usage) if not c["choices"]]
    assert len(usage) == 1
    assert usage[0]["usage"]["completion_tokens"] > 0
    assert with_usage[-1] == "[DONE]"


async def test_prompt_with_chat_upstream_becomes_one_user_message(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    refused = await post(http, function.url, {"prompt": "Tell me", "api_key": "x"})
    assert refused.status == 400  # the caller never chooses the key (or anything unknown)
    assert (await refused.json())["error"]["param"] == "api_key"
    await (await post(http, function.url, {"prompt": "Tell me"})).read()
    seen = demo.seen[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Tell me"}],
        "max_completion_tokens": 1024,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert seen.headers["Authorization"] == f"Bearer {CANARY_KEY}"


async def test_legacy_completions_endpoint_setting(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(PROMPT_ENDPOINT="completions", UPSTREAM_INCLUDE_USAGE="false")
    events = canonical_events(await (await post(http, function.url, {"prompt": "x"})).read())
    assert demo.seen[0].path == "/v1/completions"
    assert demo.seen[0].json["prompt"] == "x"
    assert "stream_options" not in demo.seen[0].json
    assert completion_text(events) == DEMO_REPLY


async def test_callers_options_are_forwarded_and_their_headers_are_not(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 10,
        "temperature": 0.5,
        "top_p": 1,
        "stop": ["\n", "END"],
        "presence_penalty": -1,
        "frequency_penalty": 2,
        "seed": 7,
        "stream": True,
        "user": "someone",
    }
    evil = await post(http, function.url, {**body, "base_url": "http://evil.example"})
    assert (await evil.json())["error"]["param"] == "base_url"  # a 400, never forwarded
    headers = {"Authorization": "Bearer caller-token", "X-Forwarded-Host": "evil.example"}
    await (await post(http, function.url, body, headers=headers)).read()
    seen = demo.seen[0]
    assert seen.json == {
        "model": "gpt-4o-mini",
        "messages": body["messages"],
        "max_completion_tokens": 10,
        "temperature": 0.5,
        "top_p": 1,
        "stop": ["\n", "END"],
        "presence_penalty": -1,
        "frequency_penalty": 2,
        "seed": 7,
        "user": "someone",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert seen.headers["Authorization"] == f"Bearer {CANARY_KEY}"
    assert "X-Forwarded-Host" not in seen.headers


async def test_stream_headers(function: Function, http: aiohttp.ClientSession) -> None:
    resp = await post(http, function.url, {"prompt": "x"}, headers={"Accept-Encoding": "gzip"})
    await resp.read()
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache, no-transform"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert len(resp.headers["X-Request-Id"]) == 32
    assert "Content-Encoding" not in resp.headers
    assert "Content-Length" not in resp.headers


async def test_headers_go_out_when_upstream_accepts_not_with_first_token(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(silence_before_first=30))
    resp = await post(http, function.url, {"prompt": "x"})
    # post() returned: the status line and headers arrived while the upstream is still silent.
    assert resp.status == 200
    assert demo.seen[0].events_sent == 0
    resp.close()
    await asyncio.wait_for(demo.seen[0].closed.wait(), 5)


@pytest.mark.parametrize("framing", ["lf", "crlf", "cr"])
@pytest.mark.parametrize("write", ["event", "byte", "pairs"])
async def test_any_upstream_framing_comes_out_canonical(
    function: Function,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    framing: str,
    write: str,
) -> None:
    demo.push(Scenario(framing=framing, write=write))  # type: ignore[arg-type]
    raw = await (
        await post(http, function.url, {"messages": [{"role": "user", "content": "x"}]})
    ).read()
    events = canonical_events(raw)
    assert chat_text(events) == DEMO_REPLY
    assert "\\u00f6" in raw.decode("ascii")  # ö escaped, never raw UTF-8
    assert events[-1] == "[DONE]"


async def test_each_event_is_written_whole(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """Even when the upstream dribbles one byte per write, no read ends mid-event."""
    demo.push(Scenario(write="byte"))
    resp = await post(http, function.url, {"prompt": "x"})
    async for piece in resp.content.iter_any():
        assert piece.endswith(b"\n\n"), piece
