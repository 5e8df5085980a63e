"""``UPSTREAM_API=responses``: the function calls the demo upstream's ``/v1/responses`` and every
output format still comes out right: chat and completion chunks, the UI message stream with
reasoning and tool parts, plain text, and the Responses stream for Responses callers; fields the
Responses API lacks are a 400 naming them (docs/responses.md)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from dev.demo_upstream import REASONING, DemoUpstream, Scenario
from lib.config import SettingsError, load_settings
from lib.responses_upstream import ChunksFromResponses
from lib.sse import Event, SSEDecoder
from tests.conftest import Function, LogTap
from tests.streams import WEATHER_TOOL, canonical_events, chat_text, chunks, completion_text, post

MakeFunction = Callable[..., Awaitable[Function]]
USER = {"role": "user", "content": "What is the weather in Paris?"}


@pytest.fixture
async def function(make_function: MakeFunction) -> Function:
    return await make_function(UPSTREAM_API="responses")


def ui_parts(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e) for e in canonical_events(raw) if e != "[DONE]"]


async def test_chat_caller_gets_chat_chunks(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream, logs: LogTap
) -> None:
    demo.push(Scenario(text="Hello from Responses"))
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
    }
    resp = await post(http, function.url + "?format=openai", body)
    events = canonical_events(await resp.read())
    assert chat_text(events) == "Hello from Responses"
    assert events[-1] == "[DONE]"
    finish = [c["choices"][0]["finish_reason"] for c in chunks(events) if c["choices"]]
    assert finish[-1] == "stop"
    assert chunks(events)[-1]["usage"]["completion_tokens"] > 0
    seen = demo.seen[0]
    assert seen.path == "/v1/responses"
    assert seen.json["input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert seen.json["stream"] is True
    assert seen.json["store"] is False
    assert seen.json["temperature"] == 0.3
    assert seen.json["max_output_tokens"] == 1024  # the deployment's cap
    (line,) = await logs.requests(1)
    assert json.loads(line)["usage"]["prompt_tokens"] > 0  # budgets see the usage


async def test_include_obfuscation_false_goes_to_the_responses_upstream(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    """A chat caller's ``include_obfuscation: false`` is sent on; ``true`` is the Responses
    API's default and is not (the chunks the caller gets are the function's own)."""
    for value, sent in ((False, {"include_obfuscation": False}), (True, None)):
        body = {"messages": [USER], "stream_options": {"include_obfuscation": value}}
        resp = await post(http, function.url + "?format=openai", body)
        assert resp.status == 200
        await resp.read()
        assert demo.seen[-1].path == "/v1/responses"
        assert demo.seen[-1].json.get("stream_options") == sent


async def test_prompt_caller_gets_completion_chunks(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="A prompt answer"))
    resp = await post(http, function.url + "?format=openai", {"prompt": "Say it"})
    events = canonical_events(await resp.read())
    assert completion_text(events) == "A prompt answer"
    assert demo.seen[0].json["input"] == "Say it"


async def test_ui_stream_gets_reasoning_and_tool_parts(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    body = {"messages": [USER], "tools": [WEATHER_TOOL], "reasoning_effort": "low"}
    resp = await post(http, function.url + "?format=ui", body)
    parts = ui_parts(await resp.read())
    kinds = [p["type"] for p in parts]
    reasoning = "".join(p["delta"] for p in parts if p["type"] == "reasoning-delta")
    assert reasoning == REASONING
    assert "tool-input-start" in kinds
    (available,) = [p for p in parts if p["type"] == "tool-input-available"]
    assert available["toolName"] == "get_weather"
    assert available["input"] == {"city": "Paris"}
    assert parts[-1] == {"type": "finish", "finishReason": "tool-calls"}
    seen = demo.seen[0].json
    assert seen["reasoning"] == {"effort": "low", "summary": "auto"}
    assert seen["tools"] == [{"type": "function", **WEATHER_TOOL["function"]}]


async def test_tool_loop_second_turn_becomes_items(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    body = {
        "messages": [
            USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    resp = await post(http, function.url + "?format=openai", body)
    assert "sunny" in chat_text(canonical_events(await resp.read()))
    seen = demo.seen[0].json
    assert seen["input"][1:] == [
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    assert seen["tool_choice"] == {"type": "function", "name": "get_weather"}


async def test_text_stream(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="Just text"))
    resp = await post(http, function.url + "?format=text", {"prompt": "x"})
    assert await resp.read() == b"Just text"


async def test_responses_caller_gets_the_responses_stream(
    function: Function, demo: DemoUpstream
) -> None:
    base = function.url.removesuffix("/api/generate")
    client = openai.AsyncOpenAI(
        api_key="sk-caller",
        base_url=base + "/api/generate?api=v1&route=responses&x=",
        max_retries=0,
    )
    # the SDK appends /responses to its base URL: ?...&x=/responses keeps the route
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }
    try:
        async with client.responses.stream(
            model="gpt-4o-mini", input=USER["content"], tools=[tool]
        ) as stream:
            final = await stream.get_final_response()
        demo.push(Scenario(text="Plain answer"))
        whole = await client.responses.create(model="gpt-4o-mini", input="Hi")
    finally:
        await client.close()
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert whole.output_text == "Plain answer"
    assert all(seen.path == "/v1/responses" for seen in demo.seen)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": "x"}, "stop"),
        ({"seed": 1}, "seed"),
        ({"presence_penalty": 1}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
    ],
)
async def test_fields_the_responses_api_lacks_are_refused(
    function: Function,
    http: aiohttp.ClientSession,
    demo: DemoUpstream,
    extra: dict[str, Any],
    param: str,
) -> None:
    resp = await post(http, function.url + "?format=openai", {"messages": [USER], **extra})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert demo.seen == []


async def test_a_mid_stream_failure_is_the_in_band_error(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="error"))
    resp = await post(http, function.url + "?format=openai", {"messages": [USER]})
    events = canonical_events(await resp.read())
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error"
    assert "mid-stream" in error["message"]


async def test_a_stream_cut_before_its_end_is_truncated(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="eof"))
    resp = await post(http, function.url + "?format=openai", {"messages": [USER]})
    events = canonical_events(await resp.read())
    assert json.loads(events[-1])["error"]["type"] == "upstream_error"


def _feed(*events: dict[str, Any]) -> list[dict[str, Any]]:
    convert = ChunksFromResponses()
    out = convert.feed([Event(json.dumps(e), e["type"], "", None) for e in events])
    return [json.loads(e.data) for e in SSEDecoder().feed(out) if e.data != "[DONE]"]


def test_function_calls_and_incomplete_become_chunks() -> None:
    got = _feed(
        {"type": "response.created", "response": {"id": "r1", "created_at": 5, "model": "m"}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "function_call", "id": "fc_a", "call_id": "c_a", "name": "f"},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "fc_a", "delta": "{}"},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "function_call", "id": "fc_b", "call_id": "c_b", "name": "g"},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "fc_b", "delta": "[]"},
        {
            "type": "response.incomplete",
            "response": {
                "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
            },
        },
    )
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in got[:4]]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    assert calls[0]["id"] == "c_a"
    assert calls[3]["function"]["arguments"] == "[]"
    assert got[4]["choices"][0]["finish_reason"] == "length"
    assert got[5]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert all(c["id"] == "r1" and c["created"] == 5 for c in got)


def test_arguments_sent_only_whole_in_done_are_not_lost() -> None:
    added = {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": {"type": "function_call", "id": "fc_a", "call_id": "c_a", "name": "f"},
    }
    done = {"type": "response.function_call_arguments.done", "item_id": "fc_a", "arguments": "{}"}
    got = _feed(added, done, done)
    fragments = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in got]
    assert fragments == ["", "{}"]  # once, not twice
    streamed = {"type": "response.function_call_arguments.delta", "item_id": "fc_a", "delta": "{}"}
    got = _feed(added, streamed, done)
    fragments = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in got]
    assert fragments == ["", "{}"]


def test_failures_become_error_chunks() -> None:
    failed = {"type": "response.failed", "response": {"error": {"message": "bad"}}}
    assert _feed(failed) == [{"error": {"message": "bad"}}]
    nested = {"type": "error", "error": {"message": "worse"}}
    assert _feed(nested) == [{"error": {"message": "worse"}}]


async def test_events_split_at_every_byte_are_reassembled(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="Grüße, byte by byte", write="byte"))
    resp = await post(http, function.url + "?format=openai", {"messages": [USER]})
    assert chat_text(canonical_events(await resp.read())) == "Grüße, byte by byte"


async def test_a_non_streamed_chat_answer(
    function: Function, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="One object"))
    body = {"messages": [USER], "stream": False}
    resp = await post(http, function.url + "?format=openai", body)
    completion = await resp.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "One object"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["completion_tokens"] > 0


def test_an_upstream_event_that_is_not_json_reaches_the_relay_as_it_is() -> None:
    """The relay names the defect (an in-band protocol error): nothing is hidden here."""
    out = ChunksFromResponses().feed([Event("not json", "response.output_text.delta")])
    assert out == b"data: not json\n\n"


def test_the_setting_is_checked() -> None:
    assert load_settings({}).upstream.api == "chat"
    assert load_settings({"UPSTREAM_API": "responses"}).upstream.url("responses") == (
        "https://api.openai.com/v1/responses"
    )
    with pytest.raises(SettingsError, match="UPSTREAM_API='assistants'"):
        load_settings({"UPSTREAM_API": "assistants"})
