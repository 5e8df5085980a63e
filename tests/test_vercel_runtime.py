"""The function under Vercel's own Python runtime (`vercel-runtime` from PyPI), started as the
platform starts it (see tests/vercel_harness.py): IPC mode streams, Lambda mode buffers.

One runtime process per configuration, shared by the module; the demo upstream it talks to runs
in the module's event loop, so tests can script it (gates, stalls) and see what it observed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import aiohttp
import pytest
import pytest_asyncio

from dev.demo_upstream import DemoUpstream, Scenario
from tests.conftest import CANARY_KEY
from tests.vercel_harness import (
    IpcRuntime,
    LambdaRequest,
    LambdaResponse,
    invoke_lambda,
    ipc_runtime,
    rfc3339_in,
    sse_data,
)

pytestmark = [pytest.mark.platform, pytest.mark.asyncio(loop_scope="module")]

JSON = {"Content-Type": "application/json"}
PROMPT = json.dumps({"prompt": "Say hello"}).encode()


@pytest.fixture(scope="module")
def runtime(served_upstream: tuple[DemoUpstream, str]) -> Iterator[IpcRuntime]:
    env = {
        "OPENAI_API_KEY": CANARY_KEY,
        "OPENAI_BASE_URL": served_upstream[1],
        "DEADLINE_MARGIN": "1",
    }
    with ipc_runtime(env=env) as started:
        yield started


@pytest.fixture(scope="module")
def keyless_runtime() -> Iterator[IpcRuntime]:
    """No key, and no PYTHONPATH: only the working directory (the project root) on the path,
    as on the platform, where `python -c` puts the cwd first on `sys.path`."""
    with ipc_runtime(env={"PYTHONPATH": ""}) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def text_of(data: str) -> str:
    chunk = json.loads(data)
    return "".join(c.get("text") or "" for c in chunk.get("choices", []))


async def test_runtime_announces_its_port_and_reports_each_invocation(
    runtime: IpcRuntime, http: aiohttp.ClientSession
) -> None:
    assert runtime.started["payload"]["httpPort"] == runtime.port
    async with http.post(runtime.base_url + "/api/generate", data=PROMPT, headers=JSON) as resp:
        assert resp.status == 200
        await resp.read()
    ends = runtime.types().count("end")
    async with http.post(runtime.base_url + "/api/generate", data=PROMPT, headers=JSON) as resp:
        await resp.read()
    assert await asyncio.to_thread(runtime.wait_for, "end", ends + 1)
    assert "handler-started" in runtime.types()


async def test_events_arrive_incrementally_through_the_runtime(
    runtime: IpcRuntime, served_upstream: tuple[DemoUpstream, str], http: aiohttp.ClientSession
) -> None:
    demo, _ = served_upstream
    gate = asyncio.Event()
    demo.push(Scenario(text="Hello there, world", gate=gate, gate_after=1))
    url = runtime.base_url + "/api/generate"
    async with http.post(url, data=PROMPT, headers=JSON) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = sse_data(resp.content)
        first = ""
        while not first:  # the opening role chunk may come through with empty text
            first = text_of(await anext(events))
        # The upstream is holding everything after its first token until the gate opens: this
        # token crossed the runtime on its own, not in a buffered response.
        assert first == "Hello"
        gate.set()
        rest = [data async for data in events]
    assert rest[-1] == "[DONE]"
    assert first + "".join(text_of(d) for d in rest[:-1]) == "Hello there, world"


@pytest.mark.parametrize(
    ("method", "headers", "body", "status"),
    [
        ("GET", {}, b"", 405),
        ("POST", {"Content-Type": "text/plain"}, PROMPT, 415),
        ("POST", JSON, b"{not json", 400),
        ("POST", JSON, b'{"prompt": "' + b"x" * 200_000 + b'"}', 413),
    ],
)
async def test_request_errors_hold_under_the_runtime(
    runtime: IpcRuntime,
    http: aiohttp.ClientSession,
    method: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    url = runtime.base_url + "/api/generate"
    async with http.request(method, url, data=body, headers=headers) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"].startswith("application/json")
        error = (await resp.json())["error"]
        assert set(error) >= {"type", "message", "param"}
        if status == 405:
            assert resp.headers["Allow"] == "OPTIONS, POST"


async def test_lib_imports_resolve_from_the_project_root_and_a_missing_key_is_named(
    keyless_runtime: IpcRuntime, http: aiohttp.ClientSession
) -> None:
    url = keyless_runtime.base_url + "/api/generate"
    async with http.post(url, data=PROMPT, headers=JSON) as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
    assert error["type"] == "configuration_error"
    assert "OPENAI_API_KEY" in error["message"]


async def test_platform_deadline_ends_the_stream_in_band_and_closes_the_upstream(
    runtime: IpcRuntime, served_upstream: tuple[DemoUpstream, str], http: aiohttp.ClientSession
) -> None:
    demo, _ = served_upstream
    demo.push(Scenario(text="one two three", gate=asyncio.Event(), gate_after=1))  # never opens
    header = rfc3339_in(3)
    deadline = datetime.fromisoformat(header).timestamp()
    before = len(demo.seen)
    url = runtime.base_url + "/api/generate"
    headers = {**JSON, "x-vercel-internal-deadline": header}
    async with http.post(url, data=PROMPT, headers=headers) as resp:
        assert resp.status == 200
        events = [data async for data in sse_data(resp.content)]
        ended = time.time()
    assert "[DONE]" not in events
    notice = json.loads(events[-1])
    assert notice["error"]["type"] == "deadline_exceeded"
    # DEADLINE_MARGIN=1: the notice comes about a second before the platform would cut.
    assert deadline - 1.5 < ended < deadline
    seen = demo.seen[before]
    await asyncio.wait_for(seen.closed.wait(), 5)


# --- Lambda mode -----------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lambda_responses(served_upstream: tuple[DemoUpstream, str]) -> list[LambdaResponse]:
    """One Lambda-mode process answering several requests in turn (in a thread: the upstream
    it calls runs in this event loop)."""
    demo, base_url = served_upstream
    demo.push(Scenario(text="Buffered reply"))
    env = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": base_url}
    requests = [
        LambdaRequest("POST", "/api/generate", JSON, PROMPT),
        LambdaRequest("GET", "/api/generate"),
        LambdaRequest("POST", "/api/generate", JSON, b"{not json"),
    ]
    return await asyncio.to_thread(invoke_lambda, requests, env=env)


async def test_lambda_mode_returns_the_whole_stream_buffered(
    lambda_responses: list[LambdaResponse],
) -> None:
    response = lambda_responses[0]
    assert response.status == 200
    assert (response.header("content-type") or "").startswith("text/event-stream")
    events = [
        block.removeprefix(b"data: ").decode()
        for block in response.body.split(b"\n\n")
        if block.startswith(b"data: ")
    ]
    assert events[-1] == "[DONE]"
    assert "".join(text_of(e) for e in events[:-1]) == "Buffered reply"


async def test_lambda_mode_answers_errors(lambda_responses: list[LambdaResponse]) -> None:
    not_allowed, bad_json = lambda_responses[1], lambda_responses[2]
    assert not_allowed.status == 405
    assert not_allowed.header("allow") == "OPTIONS, POST"
    assert bad_json.status == 400
    assert json.loads(bad_json.body)["error"]["type"]
