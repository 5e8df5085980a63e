"""Upstream events that are valid JSON of a shape no format expects, and upstream usage that is
not just counts: an in-band ``upstream_protocol_error`` (never an exception, a dropped
connection in a format that has an error channel, or a traceback), and a log line that holds
only the integer usage fields."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lib.config import load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, LogTap, serve_asgi
from tests.streams import post

FIRST = (
    '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
)
DEEP = "[" * 100_000 + "]" * 100_000

MALFORMED = {
    "nested 100,000 deep": '{"choices":' + DEEP + "}",
    "nested inside a delta": '{"choices":[{"index":0,"delta":{"content":' + DEEP + "}}]}",
    "choices is a string": '{"choices":"oops"}',
    "choices is an object": '{"choices":{"0":{"delta":{"content":"x"}}}}',
    "a choice is a string": '{"choices":["x"]}',
    "delta is a string": '{"choices":[{"index":0,"delta":"x","finish_reason":null}]}',
    "delta is a list": '{"choices":[{"index":0,"delta":["x"],"finish_reason":null}]}',
    "content is a number": '{"choices":[{"index":0,"delta":{"content":7},"finish_reason":null}]}',
    "usage is a list": '{"choices":[],"usage":[1,2]}',
}

Relay = Callable[[bytes, str, dict[str, object]], Awaitable[aiohttp.ClientResponse]]


@pytest.fixture
async def relay(
    aiohttp_server: Callable[..., Awaitable[TestServer]], http: aiohttp.ClientSession
) -> AsyncIterator[Relay]:
    """The real function in front of a tiny upstream that writes ``raw`` and closes."""
    raws: list[bytes] = []

    async def upstream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(raws.pop(0))
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream)
    server = await aiohttp_server(app)
    settings = load_settings(
        {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": str(server.make_url("/v1"))}
    )
    url, stop = await serve_asgi(GenerateHandler(settings))

    async def send(raw: bytes, query: str, body: dict[str, object]) -> aiohttp.ClientResponse:
        raws.append(raw)
        return await post(http, f"{url}/api/generate{query}", body)

    yield send
    await stop()


CHAT_BODY: dict[str, object] = {"messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("event", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("query", ["", "?format=ui"])
async def test_a_malformed_event_ends_the_stream_in_band(
    event: str, query: str, relay: Relay, logs: LogTap
) -> None:
    raw = f"data: {FIRST}\n\ndata: {event}\n\ndata: [DONE]\n\n".encode()
    resp = await relay(raw, query, CHAT_BODY)
    assert resp.status == 200
    events = sse_data_of(await resp.read())
    parts = [json.loads(e) for e in events if e != "[DONE]"]
    if query:  # the UI message stream: an error part, then a finish with reason "error"
        errors = [p for p in parts if p["type"] == "error"]
        assert len(errors) == 1
        assert "upstream" in errors[0]["errorText"]
        assert parts[-1] == {"type": "finish", "finishReason": "error"}
    else:  # OpenAI: the error event last, and no [DONE]
        assert "[DONE]" not in events
        assert parts[-1]["error"]["type"] == "upstream_protocol_error"
        assert [p["choices"][0]["delta"]["content"] for p in parts[:-1]] == ["Hi"]
    line = json.loads((await logs.requests(1))[0])
    assert line["error_type"] == "upstream_protocol_error"
    assert not [x for x in logs.lines if "Traceback" in x]


def sse_data_of(raw: bytes) -> list[str]:
    events = raw.decode().split("\n\n")
    return [e.removeprefix("data: ") for e in events if e.startswith("data: ")]


async def test_the_text_format_drops_the_connection_on_a_malformed_event(relay: Relay) -> None:
    raw = f"data: {FIRST}\n\ndata: {MALFORMED['delta is a string']}\n\n".encode()
    resp = await relay(raw, "?format=text", CHAT_BODY)
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # no error channel in plain text: a broken stream, never a clean end


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "one JSON object"])
async def test_the_log_line_keeps_only_the_integer_usage_fields(
    relay: Relay, logs: LogTap, stream: bool
) -> None:
    usage = {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "echo": CANARY_KEY,
        "flag": True,
        "prompt_tokens_details": {"cached_tokens": 1, "note": CANARY_KEY},
        "deep": {"a": {"b": [CANARY_KEY]}},
        CANARY_KEY: 1,  # names are upstream text too
    }
    chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    raw = f"data: {FIRST}\n\ndata: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    body = {**CHAT_BODY, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    resp = await relay(raw, "", body)
    await resp.read()
    line = json.loads((await logs.requests(1))[0])
    assert line["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    assert all(CANARY_KEY not in x for x in logs.lines)
