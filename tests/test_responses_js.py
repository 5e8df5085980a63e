"""The AI SDK's ``@ai-sdk/openai`` provider (whose default model call is the Responses API)
pointed at ``/api/v1`` through vercel.json's rewrites: ``streamText`` with a tool the SDK runs
and a second step with its result, reasoning summaries, ``generateText``, and a mid-stream
failure the SDK reports as an error (docs/responses.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dev.demo_upstream import REASONING, DemoUpstream, Scenario
from dev.serve import Function as ServedFunction
from dev.serve import LocalPlatform, load_config
from lib.config import PROJECT_ROOT, load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, serve_asgi
from tests.jsdriver import NodeDriver

pytestmark = pytest.mark.node

Site = Callable[..., Awaitable[str]]


@pytest.fixture
async def site(upstream_url: str) -> AsyncIterator[Site]:
    stops = []

    async def start(**env: str) -> str:
        environ = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": upstream_url, **env}
        handler = GenerateHandler(load_settings(environ))
        platform = LocalPlatform(
            PROJECT_ROOT,
            load_config(PROJECT_ROOT / "vercel.json"),
            {"/api/generate": ServedFunction("api/generate.py", handler, None)},
        )
        url, stop = await serve_asgi(platform)
        stops.append(stop)
        return url + "/api/v1"

    yield start
    for stop in stops:
        await stop()


async def test_stream_text_runs_a_tool_over_the_responses_api(
    node: NodeDriver, site: Site, demo: DemoUpstream
) -> None:
    base = await site()
    out = await node.call(
        "responses", baseURL=base, model="gpt-4o-mini", prompt="Weather in Paris?"
    )
    assert out["errors"] == []
    assert out["tools"] == [{"name": "get_weather", "input": {"city": "Paris"}}]
    assert out["executed"] == ["Paris"]
    assert out["finishReasons"] == ["tool-calls", "stop"]
    assert out["text"] == 'The tool answered: {"city":"Paris","temp_c":21}. That is my answer.'
    first, second = (seen.json for seen in demo.seen)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    call, result = second["messages"][-2:]
    assert call["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result == {
        "role": "tool",
        "tool_call_id": call["tool_calls"][0]["id"],
        "content": '{"city":"Paris","temp_c":21}',
    }
    for seen in demo.seen:
        assert seen.headers["Authorization"] == f"Bearer {CANARY_KEY}"


async def test_reasoning_summaries_reach_stream_text(
    node: NodeDriver, site: Site, demo: DemoUpstream
) -> None:
    # A gpt-5 model name makes the SDK send reasoning (and include encrypted reasoning).
    base = await site(ALLOWED_MODELS="gpt-5-mini", DEFAULT_MODEL="gpt-5-mini")
    demo.push(Scenario(text="Sunny."))
    out = await node.call(
        "responses", baseURL=base, model="gpt-5-mini", prompt="Hello", reasoning=True
    )
    assert out["errors"] == []
    assert out["reasoning"] == REASONING
    assert out["text"] == "Sunny."
    assert demo.seen[0].json["reasoning_effort"] == "low"


async def test_generate_text_gets_one_response(
    node: NodeDriver, site: Site, demo: DemoUpstream
) -> None:
    base = await site()
    out = await node.call(
        "responses", baseURL=base, model="gpt-4o-mini", prompt="Hi", mode="generateText"
    )
    assert out["text"] == demo.reply
    assert out["finishReason"] == "stop"
    assert out["usage"]["outputTokens"] > 0


async def test_a_mid_stream_failure_is_an_error_in_stream_text(
    node: NodeDriver, site: Site, demo: DemoUpstream
) -> None:
    base = await site()
    demo.push(Scenario(text="a b c d", after=2, ending="error"))
    out = await node.call("responses", baseURL=base, model="gpt-4o-mini", prompt="Hi")
    assert out["errors"]
    assert "upstream" in out["errors"][0].lower()
    assert out["finishReasons"] == ["error"]


async def test_stream_text_over_a_responses_upstream(
    node: NodeDriver, site: Site, demo: DemoUpstream
) -> None:
    """Both directions at once: the AI SDK's Responses calls, served from a Responses upstream."""
    base = await site(UPSTREAM_API="responses")
    out = await node.call(
        "responses", baseURL=base, model="gpt-4o-mini", prompt="Weather in Paris?"
    )
    assert out["errors"] == []
    assert out["executed"] == ["Paris"]
    assert out["finishReasons"] == ["tool-calls", "stop"]
    assert out["text"] == 'The tool answered: {"city":"Paris","temp_c":21}. That is my answer.'
    assert [seen.path for seen in demo.seen] == ["/v1/responses", "/v1/responses"]
    assert demo.seen[1].json["input"][-1]["type"] == "function_call_output"
