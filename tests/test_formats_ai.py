"""The UI message stream and text formats on the wire, and how a request picks its format."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from lib.aisdk import ai_sdk_finish_reason
from lib.errors import RequestError
from lib.negotiate import choose_format, prefers_text
from lib.request import GenerateRequest
from tests.conftest import Function, tapped
from tests.streams import canonical_events, post, read_until

UI_BODY = {
    "id": "c1",
    "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hello there"}]}],
    "trigger": "submit-message",
}
CHAT = GenerateRequest(shape="chat", model="m", max_tokens=1, messages=({"role": "user"},))
PROMPT = GenerateRequest(shape="completion", model="m", max_tokens=1, prompt="hi")
UI = GenerateRequest(shape="chat", model="m", max_tokens=1, ui_messages=True)


def ui_parts(raw: bytes) -> list[object]:
    return [json.loads(e) if e != "[DONE]" else e for e in canonical_events(raw)]


async def test_ui_stream_is_exactly_what_the_ai_sdk_writes(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(text="Hello, wörld"))
    resp = await post(http, function.url, UI_BODY)
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert resp.headers["x-accel-buffering"] == "no"
    assert resp.headers["cache-control"] == "no-cache, no-transform"
    assert ui_parts(await resp.read()) == [
        {"type": "start"},
        {"type": "start-step"},
        {"type": "text-start", "id": "0"},
        {"type": "text-delta", "id": "0", "delta": "Hello"},
        {"type": "text-delta", "id": "0", "delta": ","},
        {"type": "text-delta", "id": "0", "delta": " wörld"},
        {"type": "text-end", "id": "0"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]


async def test_ui_stream_from_the_completions_endpoint(
    make_function: object, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(PROMPT_ENDPOINT="completions")  # type: ignore[operator]
    demo.push(Scenario(text="one two", finish_reason="length"))
    resp = await post(http, function.url + "?format=ui", {"prompt": "x"})
    parts = ui_parts(await resp.read())
    assert demo.seen[0].path == "/v1/completions"
    deltas = [p["delta"] for p in parts if isinstance(p, dict) and p["type"] == "text-delta"]
    assert "".join(deltas) == "one two"
    assert parts[-2] == {"type": "finish", "finishReason": "length"}


async def test_ui_stream_error_mid_stream_is_an_error_part_then_finish_and_done(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(text="a b c", after=1, ending="reset"))
    resp = await post(http, function.url, UI_BODY)
    parts = ui_parts(await resp.read())
    assert parts[3] == {"type": "text-delta", "id": "0", "delta": "a"}
    error = parts[4]
    assert isinstance(error, dict)
    assert error["type"] == "error"
    assert isinstance(error["errorText"], str)
    assert error["errorText"]
    assert parts[5:] == [
        {"type": "text-end", "id": "0"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "error"},
        "[DONE]",
    ]


async def test_ui_stream_keepalive_is_a_comment(
    make_function: object, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(KEEPALIVE_INTERVAL="0.05")  # type: ignore[operator]
    gate = asyncio.Event()
    demo.push(Scenario(text="Hi there", gate=gate, gate_after=1))
    resp = await post(http, function.url, UI_BODY)
    head = await read_until(resp, b": keep-alive\n\n")
    gate.set()
    raw = head + await resp.read()
    without = b"".join(p for p in raw.split(b": keep-alive\n\n"))
    parts = ui_parts(without)
    deltas = [p["delta"] for p in parts if isinstance(p, dict) and p["type"] == "text-delta"]
    assert "".join(deltas) == "Hi there"


async def test_text_stream_is_just_the_text(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(text="Grüße 🚀 done", write="byte"))
    resp = await post(http, function.url + "?format=text", {"prompt": "x"})
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.headers["x-accel-buffering"] == "no"
    assert (await resp.read()).decode() == "Grüße 🚀 done"


async def test_text_stream_sends_nothing_while_the_upstream_is_silent(
    make_function: object, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(KEEPALIVE_INTERVAL="0.05")  # type: ignore[operator]
    demo.push(Scenario(text="late words", silence_before_first=0.3))
    resp = await post(http, function.url + "?format=text", {"prompt": "x"})
    assert await resp.read() == b"late words"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_errors() -> Iterator[_Records]:
    with tapped(_Records(), "uvicorn.error") as tap:
        yield tap


async def raw_exchange(url: str, body: bytes) -> bytes:
    """Send one HTTP/1.1 request on a raw socket and return every byte until the peer closes."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    writer.write(
        f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    async with asyncio.timeout(10):
        received = await reader.read(-1)  # until EOF: the server must close the connection
    writer.close()
    return received


@pytest.mark.parametrize("ending", ["reset", "error", "eof"])
async def test_text_stream_failure_breaks_the_connection(
    function: Function, demo: DemoUpstream, server_errors: _Records, ending: str
) -> None:
    demo.push(Scenario(text="partial answer here", after=2, ending=ending))  # type: ignore[arg-type]
    received = await raw_exchange(function.url + "?format=text", b'{"prompt": "x"}')
    head, _, body = received.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"partial answer" in body
    assert not body.endswith(b"0\r\n\r\n"), body  # no clean end of the chunked body
    assert b"\r\n0\r\n\r\n" not in body
    assert [r for r in server_errors.records if r.levelno >= logging.ERROR] == []


async def test_text_stream_success_ends_cleanly(function: Function, demo: DemoUpstream) -> None:
    demo.push(Scenario(text="whole answer"))
    received = await raw_exchange(function.url + "?format=text", b'{"prompt": "x"}')
    # The control for the test above: the same raw read does see the terminator on success.
    assert received.endswith(b"0\r\n\r\n")


# -- choosing the format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "request_", "accept", "default", "expected"),
    [
        (b"format=text", UI, None, "openai", "text"),  # the query beats the body
        (b"format=openai", UI, "text/plain", "ui", "openai"),
        (b"format=ui", PROMPT, "text/plain", "text", "ui"),
        (b"", UI, "text/plain", "text", "ui"),  # the body beats Accept and the default
        (b"", CHAT, "text/plain", "ui", "text"),  # Accept beats the default
        (b"", CHAT, "text/event-stream, text/plain;q=0.5", "text", "text"),
        (b"", CHAT, "*/*", "ui", "ui"),
        (b"", CHAT, None, "openai", "openai"),
        (b"x=1&format=ui", CHAT, None, "openai", "ui"),
    ],
)
def test_first_match_wins(
    query: bytes, request_: GenerateRequest, accept: str | None, default: str, expected: str
) -> None:
    assert choose_format(query, request_, accept, default).name == expected


def test_openai_format_follows_the_request_shape() -> None:
    assert type(choose_format(b"", PROMPT, None, "openai")).__name__ == "OpenAICompletion"
    assert type(choose_format(b"", CHAT, None, "openai")).__name__ == "OpenAIChat"


@pytest.mark.parametrize("query", [b"format=json", b"format=", b"format=ui&format=text"])
def test_unknown_format_is_a_request_error(query: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        choose_format(query, CHAT, None, "openai")
    assert caught.value.param == "format"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("text/plain", True),
        ("TEXT/PLAIN; charset=utf-8", True),
        ("text/event-stream", False),
        ("text/plain;q=0.5, text/event-stream", False),
        ("text/plain;q=0", False),
        ("*/*", False),
        ("application/json, text/plain, */*", True),
    ],
)
def test_accept(accept: str, expected: bool) -> None:
    assert prefers_text(accept) is expected


async def test_bad_format_parameter_is_a_400_naming_the_parameter(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    resp = await post(http, function.url + "?format=xml", {"prompt": "x"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "format"
    assert "openai, ui, text" in error["message"]
    assert demo.seen == []


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content-filter"),
        ("tool_calls", "tool-calls"),
        ("function_call", "tool-calls"),
        ("something_new", "other"),
        (None, "other"),
    ],
)
def test_finish_reasons_map_to_the_ai_sdk_names(reason: str | None, expected: str) -> None:
    assert ai_sdk_finish_reason(reason) == expected


async def test_default_format_setting(
    make_function: object, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(DEFAULT_FORMAT="text")  # type: ignore[operator]
    demo.push(Scenario(text="plain"))
    resp = await post(http, function.url, {"prompt": "x"})
    assert await resp.read() == b"plain"


async def test_use_chat_history_with_other_parts(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {
        "id": "c1",
        "trigger": "submit-message",
        "messageId": None,
        "messages": [
            {"id": "s", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]},
            {
                "id": "m2",
                "role": "assistant",
                "metadata": {"any": "thing"},
                "parts": [
                    {"type": "step-start"},
                    {"type": "reasoning", "text": "thinking...", "state": "done"},
                    {"type": "text", "text": "Hello", "state": "done"},
                    {"type": "source-url", "sourceId": "s1", "url": "https://example.com"},
                    {"type": "data-note", "data": {"x": 1}},
                ],
            },
            {
                "id": "m3",
                "role": "user",
                "parts": [
                    {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AA=="},
                    {"type": "text", "text": "And "},
                    {"type": "text", "text": "now?"},
                ],
            },
        ],
    }
    resp = await post(http, function.url, body)
    assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    await resp.read()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    assert demo.seen[0].json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        # reasoning, step, source and data parts are display artefacts: not sent back
        {"role": "assistant", "content": "Hello"},
        # text parts joined; the image file becomes an image_url part, in the caller's order
        {"role": "user", "content": [image, {"type": "text", "text": "And now?"}]},
    ]


async def test_use_chat_message_with_nothing_to_send_is_a_400(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """A user message is never left out: one the model cannot read is refused, named."""
    body = {
        "messages": [
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]},
            {"id": "m2", "role": "user", "parts": [{"type": "data-note", "data": {"x": 1}}]},
        ]
    }
    resp = await post(http, function.url, body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "messages[1].parts"
    assert demo.seen == []
