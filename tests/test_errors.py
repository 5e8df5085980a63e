"""Every way a request can go wrong, end to end: the status, the one envelope, no traceback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from lib.config import load_settings
from lib.handler import GenerateHandler, Misconfigured
from tests.conftest import CANARY_KEY, Function, serve_asgi
from tests.streams import canonical_events, post

MakeFunction = Callable[..., Awaitable[Function]]


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "param"}
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    assert CANARY_KEY not in json.dumps(body)
    return dict(body["error"])


# --- methods and content types -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
async def test_other_methods_get_405_with_allow(
    function: Function, http: aiohttp.ClientSession, method: str
) -> None:
    resp = await http.request(method, function.url)
    assert resp.status == 405
    assert resp.headers["Allow"] == "OPTIONS, POST"
    if method != "HEAD":
        assert (await error_of(resp))["type"] == "method_not_allowed"


async def test_options_answers_204_with_allow(
    function: Function, http: aiohttp.ClientSession
) -> None:
    resp = await http.options(function.url)
    assert resp.status == 204
    assert resp.headers["Allow"] == "OPTIONS, POST"
    assert await resp.read() == b""


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"],
)
async def test_body_must_be_declared_json(
    function: Function, http: aiohttp.ClientSession, content_type: str
) -> None:
    resp = await http.post(
        function.url, data=b'{"prompt":"x"}', headers={"Content-Type": content_type}
    )
    assert resp.status == 415
    assert (await error_of(resp))["type"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_content_types_accepted(
    function: Function, http: aiohttp.ClientSession, content_type: str
) -> None:
    resp = await http.post(
        function.url, data=b'{"prompt":"x"}', headers={"Content-Type": content_type}
    )
    assert resp.status == 200
    await resp.read()


# --- the size cap ------------------------------------------------------------------------------


async def test_declared_oversize_body_gets_413(
    function: Function, http: aiohttp.ClientSession
) -> None:
    resp = await post(http, function.url, data=b'{"prompt":"' + b"a" * 70_000 + b'"}')
    assert resp.status == 413
    assert (await error_of(resp))["type"] == "request_too_large"


@pytest.mark.parametrize(
    "env",
    [{"IMAGE_URL_SCHEMES": "none"}, {"MAX_IMAGE_BODY_BYTES": "70000"}],
    ids=["images off: MAX_BODY_BYTES", "images on: MAX_IMAGE_BODY_BYTES"],
)
async def test_chunked_oversize_body_gets_413_without_reading_the_rest(
    make_function: MakeFunction, env: dict[str, str]
) -> None:
    """The upload never finishes; the 413 must come anyway, as soon as the cap that applies to
    reading is passed (the larger image cap when images are on)."""
    function = await make_function(**env)
    host, port = function.url.split("/")[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 16_384
    for _ in range(5):  # 80 KiB > 64 KiB, and no terminating chunk ever
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_body_cap_is_a_setting(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(MAX_BODY_BYTES="300")
    resp = await post(http, function.url, {"prompt": "a" * 300})
    assert resp.status == 413
    ok = await post(http, function.url, {"prompt": "a" * 200})
    assert ok.status == 200
    await ok.read()


# --- the body ----------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    ("not json", b"{prompt: hi}", None),
    ("invalid utf-8", b'{"prompt": "\xff\xfe"}', None),
    ("lone surrogate", b'{"prompt": "\\ud800"}', None),
    ("top level array", b'["prompt"]', None),
    ("top level string", b'"hello"', None),
    ("duplicate keys", b'{"prompt": "a", "prompt": "b"}', "prompt"),
    ("NaN", b'{"prompt": "a", "temperature": NaN}', None),
    ("Infinity", b'{"prompt": "a", "temperature": -Infinity}', None),
    ("huge exponent", b'{"prompt": "a", "temperature": 1e999}', None),
    ("huge integer", b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}", None),
    ("absurd nesting", b'{"prompt": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ("deep nesting", b'{"prompt": "a", "x": ' + b"[" * 40 + b"]" * 40 + b"}", None),
    ("empty body", b"", None),
    ("neither prompt nor messages", b'{"text": "hi"}', "prompt"),
    ("both", b'{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "prompt"),
    ("empty prompt", b'{"prompt": ""}', "prompt"),
    ("blank prompt", b'{"prompt": "   "}', "prompt"),
    ("prompt not a string", b'{"prompt": 42}', "prompt"),
    ("prompt too long", b'{"prompt": "' + b"a" * 32_001 + b'"}', "prompt"),
    ("messages empty", b'{"messages": []}', "messages"),
    ("messages not a list", b'{"messages": "hi"}', "messages"),
    ("message not an object", b'{"messages": ["hi"]}', "messages[0]"),
    ("bad role", b'{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    (
        "content not a string",
        b'{"messages": [{"role": "user", "content": 1}]}',
        "messages[0].content",
    ),
    ("model not allowed", b'{"prompt": "a", "model": "gpt-9"}', "model"),
    ("max_tokens zero", b'{"prompt": "a", "max_tokens": 0}', "max_tokens"),
    ("max_tokens over cap", b'{"prompt": "a", "max_tokens": 1025}', "max_tokens"),
    ("max_tokens float", b'{"prompt": "a", "max_tokens": 1.5}', "max_tokens"),
    ("max_tokens bool", b'{"prompt": "a", "max_tokens": true}', "max_tokens"),
    ("temperature high", b'{"prompt": "a", "temperature": 2.5}', "temperature"),
    ("temperature string", b'{"prompt": "a", "temperature": "hot"}', "temperature"),
    ("top_p high", b'{"prompt": "a", "top_p": 1.1}', "top_p"),
    ("presence low", b'{"prompt": "a", "presence_penalty": -2.1}', "presence_penalty"),
    ("frequency high", b'{"prompt": "a", "frequency_penalty": 3}', "frequency_penalty"),
    ("seed float", b'{"prompt": "a", "seed": 1.5}', "seed"),
    ("stop too many", b'{"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
    ("stop not strings", b'{"prompt": "a", "stop": [1]}', "stop"),
    ("stop empty", b'{"prompt": "a", "stop": ""}', "stop"),
    ("stream not a bool", b'{"prompt": "a", "stream": "yes"}', "stream"),
    ("stream_options not object", b'{"prompt": "a", "stream_options": 1}', "stream_options"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies_get_400_with_the_field(
    function: Function,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    name: str,
    body: bytes,
    param: str | None,
) -> None:
    resp = await post(http, function.url, data=body)
    assert resp.status == 400, name
    error = await error_of(resp)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert demo.seen == []


# --- configuration -----------------------------------------------------------------------------


async def test_missing_key_is_a_500_naming_the_variable(
    upstream_url: str, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    handler = GenerateHandler(load_settings({"OPENAI_BASE_URL": upstream_url}))
    url, stop = await serve_asgi(handler)
    try:
        resp = await post(http, url + "/api/generate", {"prompt": "x"})
        assert resp.status == 500
        error = await error_of(resp)
        assert error["type"] == "configuration_error"
        assert "OPENAI_API_KEY" in error["message"]
        assert demo.seen == []
    finally:
        await stop()


async def test_invalid_setting_is_a_500_naming_the_variable(http: aiohttp.ClientSession) -> None:
    handler = Misconfigured("MAX_TOKENS='lots' is not a number")
    url, stop = await serve_asgi(handler)
    try:
        resp = await post(http, url + "/api/generate", {"prompt": "x"})
        assert resp.status == 500
        assert "MAX_TOKENS" in (await error_of(resp))["message"]
    finally:
        await stop()


async def test_a_misconfigured_function_answers_every_method_with_the_500(
    http: aiohttp.ClientSession,
) -> None:
    url, stop = await serve_asgi(Misconfigured("MAX_TOKENS='lots' is not a number"))
    try:
        for method in ("GET", "OPTIONS", "DELETE"):
            async with http.request(method, url + "/api/generate") as resp:
                assert resp.status == 500, method
                assert resp.headers["x-request-id"]
                error = await error_of(resp)
                assert error["type"] == "configuration_error"
                assert "MAX_TOKENS='lots'" in error["message"]
    finally:
        await stop()


# --- upstream status before the stream ---------------------------------------------------------


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


UPSTREAM_STATUSES: list[tuple[Scenario, int, str, str | None]] = [
    (
        Scenario(status=400, error=_error("max_tokens is too large")),
        400,
        "invalid_request_error",
        "max_tokens is too large",
    ),
    (
        Scenario(status=422, error=_error("Unprocessable thing")),
        400,
        "invalid_request_error",
        "Unprocessable thing",
    ),
    (
        Scenario(status=404, error=_error("The model `x` does not exist", "model_not_found")),
        400,
        "invalid_request_error",
        "does not exist",
    ),
    (
        Scenario(status=404, error=_error("Invalid URL (POST /v1/chat/completion)")),
        502,
        "upstream_error",
        "OPENAI_BASE_URL",
    ),
    (Scenario(status=404, error=None, content_type="text/html"), 502, "upstream_error", None),
    (Scenario(status=401), 502, "upstream_auth_error", "credentials"),
    (Scenario(status=403), 502, "upstream_auth_error", "credentials"),
    (Scenario(status=500), 502, "upstream_error", "500"),
    (Scenario(status=502), 502, "upstream_error", "502"),
    (Scenario(status=503), 502, "upstream_error", "503"),
    (
        Scenario(status=302, headers={"Location": "http://127.0.0.1:1/elsewhere"}),
        502,
        "upstream_error",
        "redirect",
    ),
    (Scenario(content_type="application/json"), 502, "upstream_protocol_error", "event stream"),
]


@pytest.mark.parametrize(("scenario", "status", "kind", "needle"), UPSTREAM_STATUSES)
async def test_upstream_status_mapping(
    function: Function,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    scenario: Scenario,
    status: int,
    kind: str,
    needle: str | None,
) -> None:
    demo.push(scenario)
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == status
    error = await error_of(resp)
    assert error["type"] == kind
    if needle:
        assert needle in error["message"]
    assert len(demo.seen) == 1  # redirects are not followed


async def test_event_stream_with_parameters_is_accepted(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """The media type is what counts: ``text/event-stream`` with a charset streams as usual."""
    demo.push(Scenario(content_type="text/event-stream; charset=utf-8"))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 200
    assert canonical_events(await resp.read())[-1] == "[DONE]"


async def test_upstream_429_keeps_retry_after(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=429, headers={"Retry-After": "7"}))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert (await error_of(resp))["type"] == "rate_limit_error"


async def test_upstream_message_never_carries_the_key(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=400, error=_error(f"Bad key {CANARY_KEY} in request")))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 400
    assert "[redacted]" in (await error_of(resp))["message"]


async def test_refused_connection_is_502(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        function = await make_function(OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")
        resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 502
    assert "connect" in (await error_of(resp))["message"]


async def test_no_answer_in_time_is_504(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(UPSTREAM_FIRST_BYTE_TIMEOUT="0.2")
    demo.push(Scenario(hang_before_headers=True))
    resp = await post(http, function.url, {"prompt": "x"})
    assert resp.status == 504
    assert (await error_of(resp))["type"] == "upstream_timeout"
    await asyncio.wait_for(demo.seen[0].closed.wait(), 5)


# --- failures after the stream started: in-band, never a clean end ------------------------------


@pytest.mark.parametrize(
    ("scenario", "needle"),
    [
        (Scenario(after=2, ending="reset"), "broke"),
        (Scenario(after=2, ending="eof"), "ended before"),
        (Scenario(after=2, ending="error", error=_error("The model overloaded")), "overloaded"),
    ],
    ids=["reset", "eof-without-done", "in-band-error"],
)
@pytest.mark.parametrize("shape", ["prompt", "messages"])
async def test_mid_stream_failure_is_one_error_event_and_no_done(
    function: Function,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    scenario: Scenario,
    needle: str,
    shape: str,
) -> None:
    demo.push(scenario)
    body: dict[str, Any] = (
        {"prompt": "x"} if shape == "prompt" else {"messages": [{"role": "user", "content": "x"}]}
    )
    resp = await post(http, function.url, body)
    assert resp.status == 200
    events = canonical_events(await resp.read())
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"}
    assert needle in last["error"]["message"]
    assert all("error" not in json.loads(e) for e in events[:-1])
    assert len(events) >= 3  # the tokens before the failure were relayed


async def test_idle_upstream_is_cut_with_an_error(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(UPSTREAM_IDLE_TIMEOUT="0.3")
    demo.push(Scenario(after=1, ending="stall"))
    events = canonical_events(await (await post(http, function.url, {"prompt": "x"})).read())
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_timeout"
    await asyncio.wait_for(demo.seen[0].closed.wait(), 5)


async def test_all_tokens_but_no_finish_reason_nor_done_is_truncated(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(ending="eof"))
    events = canonical_events(await (await post(http, function.url, {"prompt": "x"})).read())
    assert "[DONE]" not in events
    assert "error" in json.loads(events[-1])
