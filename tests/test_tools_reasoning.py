"""Streamed tool calls and reasoning: relayed intact in the openai chat format, converted to the
AI SDK's tool and reasoning parts in ``ui``; useChat history with tool parts sent upstream as
``tool_calls`` plus ``tool`` messages. The demo upstream plays the calls and the thinking."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from dev.demo_upstream import REASONING, DemoUpstream, Scenario
from lib.aisdk import UIMessageStream
from tests.conftest import Function
from tests.streams import canonical_events, post

USER = {"role": "user", "content": "Weather in Paris?"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}


def parts(raw: bytes) -> list[dict[str, Any]]:
    events = canonical_events(raw)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_openai_format_relays_tool_call_chunks_intact(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"messages": [USER], "tools": [TOOL], "stream": True}
    raw = await (await post(http, function.url, body)).read()
    events = canonical_events(raw)
    chunks = [json.loads(e) for e in events[:-1] if e]
    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    first = calls[0][0]
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(call[0]["function"].get("arguments", "") for call in calls)
    assert json.loads(arguments) == {"city": "Paris", "days": 1}
    assert len(calls) > 2  # streamed in fragments, each relayed as it came
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1] == "[DONE]"


async def test_openai_format_relays_reasoning_deltas(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(text="Answer."))
    body = {"messages": [USER], "reasoning_effort": "low"}
    events = canonical_events(await (await post(http, function.url, body)).read())
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    thought = "".join(d.get("reasoning_content", "") for d in deltas)
    text = "".join(d.get("content") or "" for d in deltas)
    assert thought == REASONING
    assert text == "Answer."


async def test_ui_tool_call_parts(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    ui = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Weather?"}]}
    raw = await (await post(http, function.url, {"messages": [ui], "tools": [TOOL]})).read()
    got = parts(raw)
    kinds = [p["type"] for p in got]
    assert kinds[:3] == ["start", "start-step", "tool-input-start"]
    assert kinds[-3:] == ["tool-input-available", "finish-step", "finish"]
    assert set(kinds[3:-3]) == {"tool-input-delta"}
    start, available = got[2], got[-3]
    assert start["toolName"] == "get_weather"
    assert available["toolCallId"] == start["toolCallId"]
    assert available["input"] == {"city": "Paris", "days": 1}  # parsed, not a string
    streamed = "".join(p["inputTextDelta"] for p in got if p["type"] == "tool-input-delta")
    assert json.loads(streamed) == available["input"]
    assert got[-1] == {"type": "finish", "finishReason": "tool-calls"}


async def test_ui_tool_arguments_that_are_not_json(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(tool_arguments='{"city": Par'))
    ui = {"role": "user", "parts": [{"type": "text", "text": "Weather?"}]}
    got = parts(await (await post(http, function.url, {"messages": [ui], "tools": [TOOL]})).read())
    error = next(p for p in got if p["type"] == "tool-input-error")
    assert error["input"] == '{"city": Par'
    assert error["toolName"] == "get_weather"
    assert "not valid JSON" in error["errorText"]


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
async def test_ui_reasoning_parts_come_before_the_text(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession, key: str
) -> None:
    demo.push(
        Scenario(text="Sunny, 21 degrees.", reasoning="Look it up. Then answer.", reasoning_key=key)
    )  # type: ignore[arg-type]
    ui = {"role": "user", "parts": [{"type": "text", "text": "Weather?"}]}
    got = parts(await (await post(http, function.url, {"messages": [ui]})).read())
    kinds = [p["type"] for p in got]
    first_text = kinds.index("text-start")
    assert kinds[2] == "reasoning-start"
    assert kinds[first_text - 1] == "reasoning-end"
    assert set(kinds[3 : first_text - 1]) == {"reasoning-delta"}
    thought = "".join(p["delta"] for p in got if p["type"] == "reasoning-delta")
    text = "".join(p["delta"] for p in got if p["type"] == "text-delta")
    assert thought == "Look it up. Then answer."
    assert text == "Sunny, 21 degrees."
    assert kinds[-2:] == ["finish-step", "finish"]


def test_ui_interleaved_calls_and_a_name_after_the_arguments() -> None:
    """Several calls interleave by index; a provider may send arguments before the name."""
    fmt = UIMessageStream()

    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        data = {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return fmt.chunk(json.dumps(data), data)

    out = chunk(
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x"'}}]}
    )
    out += chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"arguments": '{"y":'}}]})
    out += chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]})
    out += chunk({"tool_calls": [{"index": 1, "function": {"name": "g", "arguments": "2}"}}]})
    out += chunk({}, "tool_calls")
    got = [json.loads(e) for e in canonical_events(out)]
    assert [(p["type"], p["toolCallId"]) for p in got] == [
        ("tool-input-start", "a"),
        ("tool-input-delta", "a"),
        ("tool-input-delta", "a"),
        ("tool-input-start", "b"),
        ("tool-input-delta", "b"),
        ("tool-input-available", "a"),
        ("tool-input-available", "b"),
    ]
    assert got[4]["inputTextDelta"] == '{"y":2}'  # what came before the name, and after
    assert got[5]["input"] == {"x": 1}
    assert got[6] == {
        "type": "tool-input-available",
        "toolCallId": "b",
        "toolName": "g",
        "input": {"y": 2},
    }


async def test_use_chat_tool_parts_become_tool_calls_and_tool_messages(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    assistant = {
        "id": "m2",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "I should look it up."},
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool-get_weather",
                "toolCallId": "call_1",
                "state": "output-available",
                "input": {"city": "Paris"},
                "output": {"temp_c": 21},
            },
            {
                "type": "dynamic-tool",
                "toolName": "clock",
                "toolCallId": "call_2",
                "state": "output-error",
                "input": {},
                "errorText": "no clock",
            },
            {"type": "step-start"},
            {"type": "text", "text": "It is 21 degrees."},
        ],
    }
    body = {
        "id": "c1",
        "trigger": "submit-message",
        "messages": [
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Weather?"}]},
            assistant,
            {"id": "m3", "role": "user", "parts": [{"type": "text", "text": "Thanks"}]},
        ],
        "tools": [TOOL],
    }
    await (await post(http, function.url, body)).read()
    assert demo.seen[0].json["messages"] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "clock", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "no clock"},
        {"role": "assistant", "content": "It is 21 degrees."},
        {"role": "user", "content": "Thanks"},
    ]


async def test_demo_upstream_answers_a_tool_result_and_sees_images(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "21 C"},
    ]
    events = canonical_events(
        await (await post(http, function.url, {"messages": history, "tools": [TOOL]})).read()
    )
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "The tool answered: 21 C. That is my answer."
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    message = {"role": "user", "content": [{"type": "text", "text": "What?"}, image, image]}
    events = canonical_events(
        await (await post(http, function.url, {"messages": [message]})).read()
    )
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text.startswith("I see 2 images. ")


async def test_demo_upstream_calls_a_tool_only_when_asked(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a joke"}], "tools": [TOOL]}
    events = canonical_events(await (await post(http, function.url, body)).read())
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "stop"  # the user did not ask for weather
    body["tool_choice"] = "required"
    events = canonical_events(await (await post(http, function.url, body)).read())
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_model_looping_in_its_reasoning_is_cut_off(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(text="never reached", reasoning="Wait, let me reconsider. " * 200))
    ui = {"role": "user", "parts": [{"type": "text", "text": "Hi"}]}
    got = parts(await (await post(http, function.url, {"messages": [ui]})).read())
    error = next(p for p in got if p["type"] == "error")
    assert "repeating" in error["errorText"]
    assert "text-start" not in [p["type"] for p in got]
    assert got[-1] == {"type": "finish", "finishReason": "error"}


def test_ui_reasoning_that_resumes_gets_a_part_of_its_own() -> None:
    """Thinking between tool calls or after some text: each stretch is its own reasoning part."""
    fmt = UIMessageStream()

    def chunk(delta: dict[str, Any]) -> bytes:
        data = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return fmt.chunk(json.dumps(data), data)

    out = chunk({"reasoning_content": "a"}) + chunk({"content": "b"})
    out += chunk({"reasoning_content": "c"}) + fmt.close()
    got = [json.loads(e) for e in canonical_events(out)[:-1]]
    assert [(p["type"], p.get("id")) for p in got[:7]] == [
        ("reasoning-start", "reasoning-0"),
        ("reasoning-delta", "reasoning-0"),
        ("reasoning-end", "reasoning-0"),
        ("text-start", "0"),
        ("text-delta", "0"),
        ("reasoning-start", "reasoning-1"),
        ("reasoning-delta", "reasoning-1"),
    ]
    assert [p["type"] for p in got[7:]] == ["reasoning-end", "text-end", "finish-step", "finish"]


@pytest.mark.parametrize("query", ["", "?format=text"])
async def test_prompt_and_text_callers_get_the_answer_without_the_thinking(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession, query: str
) -> None:
    """Completion chunks and plain text have no place for reasoning: only the answer shows."""
    demo.push(Scenario(text="Answer.", reasoning="Secret thoughts."))
    raw = await (
        await post(http, function.url + query, {"prompt": "Hi", "reasoning_effort": "low"})
    ).read()
    assert demo.seen[0].json["reasoning_effort"] == "low"
    if query:
        assert raw == b"Answer."
        return
    chunks = [json.loads(e) for e in canonical_events(raw)[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Answer."
    assert b"Secret" not in raw
