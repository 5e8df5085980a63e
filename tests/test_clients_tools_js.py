"""The real AI SDK clients beyond text, against the running function: useChat's transport with
a client-side tool (the call arrives, the app adds its output, the SDK sends the follow-up by
itself), reasoning parts and image files; ``@ai-sdk/openai-compatible`` pointed at ``/api/v1``
(vercel.json's rewrites, as deployed) running ``streamText``'s multi-step tool loop,
``generateText`` and ``generateObject``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from dev.demo_upstream import REASONING, DemoUpstream, Scenario
from dev.serve import Function as ServedFunction
from dev.serve import LocalPlatform, load_config
from lib.config import PROJECT_ROOT, load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, Function, serve_asgi
from tests.jsdriver import NodeDriver
from tests.streams import WEATHER_TOOL

pytestmark = pytest.mark.node

PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
async def site(upstream_url: str) -> AsyncIterator[str]:
    """The function behind the project's own vercel.json rewrites; yields the site's URL."""
    environ = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": upstream_url}
    handler = GenerateHandler(load_settings(environ))
    platform = LocalPlatform(
        PROJECT_ROOT,
        load_config(PROJECT_ROOT / "vercel.json"),
        {"/api/generate": ServedFunction("api/generate.py", handler, None)},
    )
    url, stop = await serve_asgi(platform)
    yield url
    await stop()


async def test_use_chat_client_side_tool_round_trip(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    out = await node.call(
        "chat_tool",
        api=function.url,
        text="Weather in Paris?",
        tools=[WEATHER_TOOL],
        output={"temp_c": 21},
    )
    assert out["error"] is None
    assert out["status"] == "ready"
    (call,) = out["calls"]  # onToolCall fired, with the parsed input
    assert call["toolName"] == "get_weather"
    assert call["input"] == {"city": "Paris"}
    # The first answer ends with the tool part waiting for the app's output.
    tool_part = out["afterFirst"]["parts"][-1]
    assert tool_part["type"] == "tool-get_weather"
    assert tool_part["state"] == "input-available"
    assert tool_part["input"] == {"city": "Paris"}
    # The SDK sent the follow-up itself; it carried the output, converted for the model.
    assert len(out["requests"]) == 2
    follow_up = out["requests"][1]["messages"][-1]["parts"][-1]
    assert follow_up["state"] == "output-available"
    assert follow_up["output"] == {"temp_c": 21}
    upstream = demo.seen[1].json["messages"]
    assert upstream[-2]["tool_calls"][0]["id"] == call["toolCallId"]
    assert upstream[-1] == {
        "role": "tool",
        "tool_call_id": call["toolCallId"],
        "content": json.dumps({"temp_c": 21}),
    }
    final_text = "".join(p["text"] for p in out["final"]["parts"] if p["type"] == "text")
    assert final_text == 'The tool answered: {"temp_c": 21}. That is my answer.'


async def test_use_chat_shows_reasoning_parts(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="Sunny."))
    out = await node.call(
        "chat",
        api=function.url,
        text="Weather?",
        transport="default",
        body={"reasoning_effort": "low"},
    )
    assert out["error"] is None
    kinds = [p["type"] for p in out["parts"]]
    assert kinds == ["step-start", "reasoning", "text"]
    assert out["parts"][1]["text"] == REASONING
    assert out["parts"][1]["state"] == "done"
    assert out["text"] == "Sunny."


async def test_use_chat_sends_image_files(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="A tiny picture."))
    files = [{"type": "file", "mediaType": "image/png", "url": PNG, "filename": "a.png"}]
    out = await node.call(
        "chat", api=function.url, text="What is this?", transport="default", files=files
    )
    assert out["error"] is None
    assert demo.seen[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    assert out["text"] == "I see 1 image. A tiny picture."


async def test_stream_text_multi_step_tool_loop(
    node: NodeDriver, site: str, demo: DemoUpstream
) -> None:
    out = await node.call(
        "compatible", baseURL=site + "/api/v1", model="gpt-4o-mini", prompt="Weather in Paris?"
    )
    assert out["executed"] == ["Paris"]  # the SDK ran the tool once, from the streamed call
    assert out["finishReasons"] == ["tool-calls", "stop"]
    assert out["text"] == 'The tool answered: {"city":"Paris","temp_c":21}. That is my answer.'
    assert out["reasoning"] == REASONING * 2  # each step thought first
    first, second = (seen.json for seen in demo.seen)
    assert first["reasoning_effort"] == "low"
    assert "max_tokens" not in first  # the SDK sent none; the cap went in the default field
    assert second["messages"][-1]["role"] == "tool"
    for seen in demo.seen:
        assert seen.headers["Authorization"] == f"Bearer {CANARY_KEY}"


async def test_generate_text_and_generate_object(
    node: NodeDriver, site: str, demo: DemoUpstream
) -> None:
    base = site + "/api/v1"
    out = await node.call(
        "compatible", baseURL=base, model="gpt-4o-mini", prompt="Hi", mode="generateText"
    )
    assert out["text"] == demo.reply
    assert out["finishReason"] == "stop"
    assert out["usage"]["outputTokens"] > 0
    out = await node.call(
        "compatible", baseURL=base, model="gpt-4o-mini", prompt="Paris?", mode="generateObject"
    )
    assert out["object"] == {"city": "Paris", "temp_c": 1.5}
    assert demo.seen[1].json["response_format"]["type"] == "json_schema"
