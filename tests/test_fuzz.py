"""Fuzzing the real app with hypothesis: arbitrary bodies, headers, methods and query strings.

The promise under test: never a 5xx, never a traceback (in a response or the logs), every
error the one JSON envelope, every stream a whole event stream. The app is called in-process
with a recording ``send`` (thousands of uvicorn round trips would not fit the suite's time), and
valid requests go to the real demo upstream on loopback. The body arrives split at random points.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lib.asgi import App
from lib.config import load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, ErrorTap

EXAMPLES = 2000

json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
role = st.sampled_from(["user", "system", "developer", "assistant", "tool", "", "USER"])
url = st.sampled_from(["https://x.example/a.png", "data:image/png;base64,AA==", "file:///x", ""])
ui_part = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["text", "file", "reasoning", "step-start", "tool-get_weather", "dynamic-tool", "x"]
        )
    },
    optional={
        "text": st.text(max_size=20) | json_value,
        "mediaType": st.sampled_from(["image/png", "application/pdf"]) | json_value,
        "url": url | json_value,
        "toolCallId": st.text(max_size=5) | json_value,
        "toolName": st.text(max_size=5) | json_value,
        "state": st.sampled_from(["input-available", "output-available", "output-error"]),
        "input": json_value,
        "output": json_value,
        "errorText": json_value,
    },
)
content_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio"])},
    optional={
        "text": st.text(max_size=10) | json_value,
        "image_url": st.fixed_dictionaries(
            {"url": url | json_value}, optional={"detail": json_value}
        )
        | json_value,
    },
)
tool_call = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=5) | json_value,
        "type": st.just("function") | json_value,
        "function": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=5) | json_value, "arguments": json_value}
        )
        | json_value,
    },
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": role | json_value,
        "content": st.text(max_size=40) | st.lists(content_part, max_size=3) | json_value,
        "parts": st.lists(ui_part, max_size=3) | json_value,
        "id": st.text(max_size=5),
        "tool_calls": st.lists(tool_call, max_size=2) | json_value,
        "tool_call_id": st.text(max_size=5) | json_value,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.just("function") | json_value},
    optional={
        "function": st.fixed_dictionaries(
            {}, optional={"name": st.text(max_size=8) | json_value, "parameters": json_value}
        )
        | json_value
    },
)
request_object = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=80) | json_value,
        "messages": st.lists(message, max_size=4) | json_value,
        "model": st.sampled_from(["gpt-4o-mini", "demo-model", "gpt-5", ""]) | json_value,
        "max_tokens": st.integers(-5, 10**7) | json_value,
        "temperature": st.floats(-1, 3) | json_value,
        "top_p": st.floats(-1, 2),
        "stop": st.lists(st.text(max_size=5), max_size=6) | st.text(max_size=5) | json_value,
        "stream": json_value,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_value})
        | json_value,
        "trigger": st.text(max_size=10),
        "id": st.text(max_size=10),
        "n": st.integers(-2, 5),
        "tools": st.lists(tool, max_size=2) | json_value,
        "tool_choice": st.sampled_from(["auto", "none", "required", "x"]) | json_value,
        "parallel_tool_calls": json_value,
        "response_format": st.fixed_dictionaries({"type": json_value}) | json_value,
        "reasoning_effort": st.sampled_from(["low", "max"]) | json_value,
        "logprobs": json_value,
        "top_logprobs": json_value,
        "max_completion_tokens": st.integers(-5, 10**7) | json_value,
        "safety_identifier": json_value,
    },
)
plausible = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", "demo-model"])},
    optional={"max_tokens": st.integers(1, 50), "temperature": st.floats(0, 2)},
).flatmap(
    lambda base: st.one_of(
        st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=60)}),
        st.fixed_dictionaries(
            {
                "messages": st.lists(
                    st.fixed_dictionaries(
                        {
                            "role": st.sampled_from(["user", "system"]),
                            "content": st.text(max_size=30),
                        }
                    ),
                    min_size=1,
                    max_size=3,
                )
            }
        ),
    ).map(lambda extra: {**base, **extra})
)
nasty = st.sampled_from(
    [
        b'{"prompt": NaN}',
        b'{"prompt": "a", "prompt": "b"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"prompt": "\\ud800"}',
        b'{"prompt": 1e999999}',
        b'{"max_tokens": 1' + b"0" * 5000 + b"}",
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        b"",
        b"null",
        b'"prompt"',
    ]
)
body = (
    plausible.map(lambda obj: json.dumps(obj).encode())
    | plausible.map(lambda obj: json.dumps(obj, ensure_ascii=False).encode())
    | request_object.map(lambda obj: json.dumps(obj).encode())
    | request_object.map(lambda obj: json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace"))
    | json_value.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=300)
    | nasty
)
other_content_type = st.sampled_from(
    [
        b"application/json; charset=utf-8",
        b"application/json; charset=latin-1",
        b"APPLICATION/JSON",
        b"text/plain",
        b"multipart/form-data; boundary=x",
        b"",
    ]
) | st.binary(max_size=40)
content_type = st.integers(0, 9).flatmap(
    lambda i: st.just(b"application/json") if i < 7 else other_content_type
)
header_name = st.sampled_from(
    [b"accept", b"content-length", b"x-forwarded-for", b"authorization", b"origin", b"cookie"]
) | st.binary(min_size=1, max_size=20).map(bytes.lower)
extra_headers = st.lists(st.tuples(header_name, st.binary(max_size=60)), max_size=4)
OTHER_METHODS = ["GET", "OPTIONS", "PUT", "HEAD", "BREW"]
# Most requests are POSTs with a JSON content type, so that the mix reaches validation and the
# upstream, not only the 405 and 415 doors (a uniform integer is the way to weight a choice).
method = st.integers(0, 99).map(lambda i: "POST" if i < 85 else OTHER_METHODS[(i - 85) // 3])
query = st.sampled_from(
    [b"", b"format=ui", b"format=text", b"format=openai", b"a=%ff&&="]
) | st.binary(max_size=30)


@pytest.fixture
async def fuzz_handler(upstream_url: str) -> AsyncIterator[GenerateHandler]:
    env = {
        "OPENAI_API_KEY": CANARY_KEY,
        "OPENAI_BASE_URL": upstream_url,
        "ALLOWED_MODELS": "gpt-4o-mini,demo-model",
        "MAX_BODY_BYTES": "4096",
        "UPSTREAM_MAX_RETRIES": "0",
    }
    handler = GenerateHandler(load_settings(env))
    yield handler
    assert handler.client is not None
    await handler.client.close()


async def call(
    app: App,
    method: str,
    headers: list[tuple[bytes, bytes]],
    query: bytes,
    body: bytes,
    cuts: list[int],
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the real app; the body is delivered in pieces split at ``cuts``."""
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points)] or [b""]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await never.wait()  # the caller stays connected
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/api/generate",
        "raw_path": b"/api/generate",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 3000),
    }
    async with asyncio.timeout(10):
        await app(scope, receive, send)
    assert sent, "no response at all"
    start = sent[0]
    assert start["type"] == "http.response.start"
    assert all(m["type"] == "http.response.body" for m in sent[1:])
    assert sent[-1].get("more_body", False) is False, "the response never ended"
    return (
        start["status"],
        {k.lower(): v for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=method,
    ctype=content_type,
    extra=extra_headers,
    query=query,
    body=body,
    cuts=st.lists(st.integers(0, 10_000), max_size=3),
)
# Found by this test: an unhashable role used to be a 500 (lib/request.py).
@example(
    method="POST",
    ctype=b"application/json",
    extra=[],
    query=b"",
    body=b'{"messages": [{"role": []}]}',
    cuts=[],
)
async def test_no_request_gets_a_5xx_a_traceback_or_a_bare_error(
    fuzz_handler: GenerateHandler,
    error_tap: ErrorTap,
    method: str,
    ctype: bytes,
    extra: list[tuple[bytes, bytes]],
    query: bytes,
    body: bytes,
    cuts: list[int],
) -> None:
    headers = [(b"content-type", ctype), *extra] if ctype else extra
    status, response_headers, raw = await call(fuzz_handler, method, headers, query, body, cuts)
    event(f"status {status}")  # --hypothesis-show-statistics shows the mix reached
    assert status < 500, (status, raw[:300])
    assert b"Traceback" not in raw
    assert CANARY_KEY.encode() not in raw
    assert not error_tap.tracebacks, error_tap.tracebacks
    if status >= 400:
        assert response_headers[b"content-type"] == b"application/json"
        envelope = json.loads(raw)
        assert set(envelope) == {"error"}
        assert set(envelope["error"]) == {"type", "message", "param"}
        assert envelope["error"]["message"]
    elif status == 200 and response_headers.get(b"content-type", b"").startswith(
        b"text/event-stream"
    ):
        assert raw.endswith(b"\n\n")
        last = raw[:-2].rsplit(b"\n\n", 1)[-1]
        assert last == b"data: [DONE]" or b"error" in last, last[:200]
