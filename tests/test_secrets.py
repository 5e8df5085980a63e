"""The provider key never leaves the server: a canary key runs through successful, failing and
rejected requests, and every response body, header and log line is scanned for it. Log lines
stay one JSON line each, whatever control characters a caller puts in a prompt."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario, error_body
from tests.conftest import CANARY_KEY, Function, LogTap
from tests.streams import post

MakeFunction = Callable[..., Awaitable[Function]]
TOKEN = "caller-token-0123456789"
NEEDLES = (CANARY_KEY, CANARY_KEY[:12], CANARY_KEY[-12:])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_key_appears_in_no_response_and_no_log_line(
    make_function: MakeFunction,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    logs: LogTap,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every other logger too: aiohttp, uvicorn, asyncio
    echo = f"Incorrect API key provided: {CANARY_KEY}."
    function = await make_function(AUTH_TOKENS=TOKEN, LOG_PROMPTS="true", RATE_LIMIT="50/minute")
    dead = await make_function(OPENAI_BASE_URL=f"http://127.0.0.1:{_closed_port()}/v1")
    demo.push(
        Scenario(),
        Scenario(
            status=401, error=error_body(echo, "invalid_request_error", code="invalid_api_key")
        ),
        Scenario(ending="error", after=2, error=error_body(echo, "server_error")),
        Scenario(ending="reset", after=1),
        Scenario(status=429, headers={"Retry-After": "3"}),
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    calls: list[tuple[str, dict[str, object] | bytes, dict[str, str]]] = [
        (function.url, {"prompt": "hi"}, auth),  # success
        (function.url, {"prompt": "hi"}, auth),  # upstream 401 echoing the key
        (function.url, {"messages": [{"role": "user", "content": "hi"}]}, auth),  # in-band error
        (function.url, {"prompt": "hi"}, auth),  # upstream reset mid-stream
        (function.url, {"prompt": "hi"}, auth),  # upstream 429
        (function.url, b'{"prompt": ', auth),  # bad JSON
        (function.url, {"prompt": "hi", "model": "gpt-5-ultra"}, auth),  # not allowed
        (function.url, {"prompt": "hi"}, {}),  # no token
        (function.url, {"prompt": "hi"}, {"Authorization": f"Bearer {CANARY_KEY}"}),  # wrong one
        (dead.url, {"prompt": "hi"}, {}),  # upstream unreachable
    ]
    seen: list[str] = []
    for url, body, headers in calls:
        if isinstance(body, bytes):
            resp = await post(http, url, data=body, headers=headers)
        else:
            resp = await post(http, url, body, headers=headers)
        try:
            raw = await resp.read()
        except aiohttp.ClientPayloadError:
            raw = b""  # a text-format break; nothing more to scan
        seen.append(f"{resp.status} {dict(resp.headers)} {raw.decode('utf-8', 'replace')}")
    statuses = [int(s.split(" ", 1)[0]) for s in seen]
    assert statuses == [200, 502, 200, 200, 429, 400, 400, 401, 401, 502]
    await logs.wait_for(len(calls))
    everything = seen + logs.lines + [r.getMessage() for r in caplog.records]
    for needle in NEEDLES:
        leaks = [text for text in everything if needle in text]
        assert not leaks, leaks
    assert not any("authorization" in line.lower() for line in logs.lines)
    assert demo.seen[0].headers["Authorization"] == f"Bearer {CANARY_KEY}"  # it did travel


async def test_log_lines_escape_control_characters_in_prompts(
    make_function: MakeFunction, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    function = await make_function(LOG_PROMPTS="true")
    forged = 'hi\r\n{"event":"request","status":200,"forged":true}\x1b[31mred\x1b[0m\x00\u2028'
    resp = await post(http, function.url, {"prompt": forged})
    await resp.read()
    await logs.wait_for(2)  # the start-up warning and the request
    line = next(line for line in logs.lines if '"event":"request"' in line)
    assert not any(ch in line for ch in "\r\n\x1b\x00\u2028")
    assert json.loads(line)["prompt"] == forged
