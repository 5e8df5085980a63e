"""``POST /api/v1/responses`` over the default Chat Completions upstream: what a Responses
request becomes upstream (exactly), what is refused (a 400 naming the Responses field), the
event stream byte for byte in its order, and the real ``openai`` SDK reading both the stream
and the one-object answer (docs/responses.md)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pydantic
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from dev.serve import Function as PlatformFunction
from dev.serve import LocalPlatform, load_config
from lib.config import PROJECT_ROOT, load_settings
from lib.errors import UpstreamStreamError
from lib.handler import GenerateHandler
from lib.responses import Meta, ResponsesStream
from lib.sse import SSEDecoder
from tests.conftest import CANARY_KEY, LogTap, serve_asgi
from tests.streams import CITY_PARAMETERS

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {**CITY_PARAMETERS, "additionalProperties": False},
    "strict": True,
}
TEXT = "Grüße from the Responses API 🚀, streamed."

Site = Callable[..., Awaitable[str]]


@pytest.fixture
async def site(upstream_url: str) -> AsyncIterator[Site]:
    """The function behind the project's own vercel.json rewrites; returns the site's URL."""
    stops = []

    async def start(**env: str) -> str:
        environ = {
            "OPENAI_API_KEY": CANARY_KEY,
            "OPENAI_BASE_URL": upstream_url,
            "UPSTREAM_MAX_RETRIES": "0",
            **env,
        }
        handler = GenerateHandler(load_settings(environ))
        platform = LocalPlatform(
            PROJECT_ROOT,
            load_config(PROJECT_ROOT / "vercel.json"),
            {"/api/generate": PlatformFunction("api/generate.py", handler, None)},
        )
        url, stop = await serve_asgi(platform)
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        await stop()


@pytest.fixture
async def sdk(site: Site) -> AsyncIterator[openai.AsyncOpenAI]:
    url = await site()
    client = openai.AsyncOpenAI(api_key="sk-caller", base_url=url + "/api/v1", max_retries=0)
    yield client
    await client.close()


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> aiohttp.ClientResponse:
    return await http.post(url + "/api/v1/responses", json=body)


async def forwarded(
    http: aiohttp.ClientSession, url: str, demo: DemoUpstream, body: dict[str, Any]
) -> dict[str, Any]:
    resp = await post(http, url, body)
    assert resp.status == 200, await resp.text()
    await resp.read()
    payload: dict[str, Any] = demo.seen[-1].json
    return payload


async def refused(
    http: aiohttp.ClientSession, url: str, demo: DemoUpstream, body: dict[str, Any]
) -> dict[str, Any]:
    before = len(demo.seen)
    resp = await post(http, url, body)
    assert resp.status == 400, await resp.text()
    assert len(demo.seen) == before  # never sent upstream
    error: dict[str, Any] = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    return error


def events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    decoded = SSEDecoder().feed(raw)
    return [(e.event, json.loads(e.data)) for e in decoded]


# --- the request ---------------------------------------------------------------------------------


async def test_a_full_request_becomes_the_chat_request(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    body = {
        "model": "gpt-4o-mini",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Use metric units."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in "},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,iVBO",
                        "detail": "low",
                    },
                ],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {
                "type": "function_call",
                "call_id": "call_2",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ],
        "stream": True,
        "max_output_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": True,
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": {"type": "object"},
                "strict": True,
            },
            "verbosity": "low",
        },
        "user": "u-1",
        "store": False,
    }
    payload = await forwarded(http, url, demo, body)
    assert payload["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use metric units."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": "A cat.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    function = {k: v for k, v in WEATHER.items() if k != "type"}
    assert payload["tools"] == [{"type": "function", "function": function}]
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert payload["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    assert payload["max_completion_tokens"] == 50
    for key, value in (
        ("temperature", 0.5),
        ("top_p", 0.9),
        ("parallel_tool_calls", True),
        ("reasoning_effort", "low"),
        ("verbosity", "low"),
        ("user", "u-1"),
        ("stream", True),
    ):
        assert payload[key] == value, key
    assert "store" not in payload
    assert "input" not in payload


async def test_a_string_input_is_one_user_message(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    payload = await forwarded(http, url, demo, {"input": "Hi", "stream": True})
    assert payload["messages"] == [{"role": "user", "content": "Hi"}]
    assert payload["model"] == "gpt-4o-mini"  # the deployment's default


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "store": True}, "store"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"input": "x", "metadata": {"a": "b"}}, "metadata"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": "x", "service_tier": "flex"}, "service_tier"),
        ({"input": "x", "top_logprobs": 2}, "top_logprobs"),
        ({"input": [{"role": "user", "content": "x", "phase": "a"}]}, "input[0].phase"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": "x", "reasoning": {"effort": "low", "generate_summary": "auto"}},
            "reasoning.generate_summary",
        ),
        ({"input": "x", "reasoning": {"summary": "long"}}, "reasoning.summary"),
        ({"input": "x", "reasoning": {"summary": ["auto"]}}, "reasoning.summary"),  # fuzz: a 500
        ({"model": "gpt-4o"}, "input"),
        # the Chat Completions validator's own rules, renamed to the Responses field
        ({"input": "x", "max_output_tokens": 10**6}, "max_output_tokens"),
        ({"input": "x", "model": "not-allowed"}, "model"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "x", "text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        (
            {
                "input": [
                    {
                        "role": "system",
                        "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                    }
                ]
            },
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0]"),
    ],
)
async def test_refused_with_the_responses_field_named(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream, body: dict[str, Any], param: str
) -> None:
    url = await site()
    error = await refused(http, url, demo, body)
    assert error["param"] == param, error
    assert "messages[" not in error["message"]
    assert "max_completion_tokens" not in error["message"]


async def test_the_message_limits_name_input(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site(MAX_MESSAGES="2", MAX_PROMPT_CHARS="10")
    items = [{"role": "user", "content": "a"}] * 3
    error = await refused(http, url, demo, {"input": items})
    assert error["param"] == "input"
    assert "at most 2" in error["message"]
    error = await refused(http, url, demo, {"input": "x" * 11})
    assert error["param"] == "input"
    assert "the limit is 10" in error["message"]


async def test_stateless_forms_of_the_stateful_fields_are_accepted(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    body = {
        "input": "x",
        "store": False,
        "previous_response_id": None,
        "background": False,
        "include": ["reasoning.encrypted_content"],
        "metadata": {},
        "truncation": "disabled",
        "stream_options": {"include_obfuscation": False},
        "stream": True,
    }
    await forwarded(http, url, demo, body)


async def test_allowed_params_applies_to_responses_fields(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site(ALLOWED_PARAMS="max_tokens,max_completion_tokens")
    error = await refused(http, url, demo, {"input": "x", "temperature": 0.2})
    assert error["param"] == "temperature"
    assert "turned off" in error["message"]


async def test_ignored_params_covers_responses_fields(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site(IGNORED_PARAMS="service_tier")
    body = {"input": "x", "service_tier": "flex", "stream": True}
    payload = await forwarded(http, url, demo, body)
    assert "service_tier" not in payload


async def test_format_parameter_is_refused(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    before = len(demo.seen)
    resp = await http.post(url + "/api/v1/responses?format=ui", json={"input": "x"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "format"
    assert len(demo.seen) == before


async def test_get_is_a_405(site: Site, http: aiohttp.ClientSession) -> None:
    url = await site()
    resp = await http.get(url + "/api/v1/responses")
    assert resp.status == 405
    assert (await resp.json())["error"]["type"] == "method_not_allowed"


async def test_request_is_logged_like_the_others(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream, logs: LogTap
) -> None:
    url = await site()
    resp = await post(http, url, {"input": "Hi", "stream": True})
    await resp.read()
    (line,) = await logs.requests(1)
    record = json.loads(line)
    assert record["format"] == "responses"
    assert record["status"] == 200
    assert record["model"] == "gpt-4o-mini"
    assert record["usage"]["completion_tokens"] > 0


# --- the stream ----------------------------------------------------------------------------------


async def test_the_event_sequence(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    demo.push(Scenario(text="Hello there", reasoning="Let me think"))
    resp = await post(http, url, {"input": "Hi", "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    got = events(await resp.read())
    kinds = [kind for kind, _ in got]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * 3,
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 2,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["type"] for _, data in got] == kinds
    assert [data["sequence_number"] for _, data in got] == list(range(len(got)))
    final = got[-1][1]["response"]
    assert final["status"] == "completed"
    reasoning, message = final["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me think"}]
    assert reasoning["encrypted_content"] is None  # nothing is kept to encrypt
    assert message["content"][0]["text"] == "Hello there"
    assert final["usage"]["output_tokens"] > 0
    assert final["usage"]["total_tokens"] == (
        final["usage"]["input_tokens"] + final["usage"]["output_tokens"]
    )


async def test_a_length_stop_is_incomplete(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    demo.push(Scenario(text="cut off", finish_reason="length"))
    got = events(await (await post(http, url, {"input": "Hi", "stream": True})).read())
    kind, data = got[-1]
    assert kind == "response.incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_a_failure_after_the_stream_began_is_response_failed(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site()
    demo.push(Scenario(text="a b c d", after=2, ending="error"))
    got = events(await (await post(http, url, {"input": "Hi", "stream": True})).read())
    kinds = [kind for kind, _ in got]
    assert "response.completed" not in kinds
    assert kinds[-2:] == ["error", "response.failed"]
    failed = got[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "upstream_error"
    assert failed["output"][0]["content"] == []  # the text item never finished


async def test_keepalives_are_comments(
    site: Site, http: aiohttp.ClientSession, demo: DemoUpstream
) -> None:
    url = await site(KEEPALIVE_INTERVAL="0.05")
    demo.push(Scenario(text=TEXT, silence_before_first=0.3))
    raw = await (await post(http, url, {"input": "Hi", "stream": True})).read()
    assert b": keep-alive\n\n" in raw
    assert events(raw)[-1][0] == "response.completed"


def test_tool_calls_become_function_call_items() -> None:
    stream = ResponsesStream(Meta("resp_1", 7, "m", {}))
    out = stream.open()

    def call(index: int, **function: str) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "function": function}
        if "name" in function:
            item["id"] = f"call_{index}"
        return {"choices": [{"index": 0, "delta": {"tool_calls": [item]}, "finish_reason": None}]}

    for chunk in (
        {"choices": [{"index": 0, "delta": {"content": "Checking."}, "finish_reason": None}]},
        call(0, name="get_weather", arguments='{"ci'),
        call(0, arguments='ty":"Paris"}'),
        call(1, name="get_time", arguments="{}"),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ):
        out += stream.chunk(json.dumps(chunk), chunk)
    out += stream.close()
    got = events(out)
    deltas = [d["delta"] for k, d in got if k == "response.function_call_arguments.delta"]
    assert deltas == ['{"ci', 'ty":"Paris"}', "{}"]
    done = [d for k, d in got if k == "response.function_call_arguments.done"]
    assert [(d["name"], d["arguments"]) for d in done] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_time", "{}"),
    ]
    final = got[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == [
        "message",
        "function_call",
        "function_call",
    ]
    assert [item.get("call_id") for item in final["output"][1:]] == ["call_0", "call_1"]
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))


def test_fail_ends_with_error_and_response_failed() -> None:
    stream = ResponsesStream(Meta("resp_1", 7, "m", {}))
    out = stream.open() + (stream.fail(UpstreamStreamError("boom")) or b"")
    got = events(out)
    assert [k for k, _ in got] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    error = got[2][1]
    assert error["message"] == "boom"
    assert error["error"]["message"] == "boom"


# --- the real openai SDK -------------------------------------------------------------------------


async def test_sdk_streams_text(sdk: openai.AsyncOpenAI, demo: DemoUpstream) -> None:
    demo.push(Scenario(text=TEXT))
    stream = await sdk.responses.create(model="gpt-4o-mini", input="Say hi", stream=True)
    got = [event async for event in stream]
    text = "".join(e.delta for e in got if e.type == "response.output_text.delta")
    assert text == TEXT
    assert got[-1].type == "response.completed"
    assert got[-1].response.output_text == TEXT
    assert demo.seen[-1].headers["Authorization"] == f"Bearer {CANARY_KEY}"


async def test_sdk_default_call_gets_one_response(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text=TEXT))
    response = await sdk.responses.create(
        model="gpt-4o-mini", input="Say hi", instructions="Be kind"
    )
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == TEXT
    assert response.instructions == "Be kind"
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    assert demo.seen[-1].json["stream"] is True  # the upstream is still streamed


async def test_sdk_stream_helper_final_response_with_a_tool_loop(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    question = "What is the weather in Paris?"
    async with sdk.responses.stream(model="gpt-4o-mini", input=question, tools=[WEATHER]) as stream:
        arguments = [
            e.delta async for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        final = await stream.get_final_response()
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert "".join(arguments) == call.arguments
    # the second turn: the SDK's usual loop, the whole output sent back with the call's result
    response = await sdk.responses.create(
        model="gpt-4o-mini",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": question},
            *final.output,
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    assert "sunny, 21 C" in response.output_text
    assert demo.seen[-1].json["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"},
    ]


async def test_sdk_raises_on_a_mid_stream_failure(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="reset"))
    stream = await sdk.responses.create(model="gpt-4o-mini", input="Say hi", stream=True)
    with pytest.raises(openai.APIError, match="upstream"):
        async for _ in stream:
            pass


async def test_sdk_stream_helper_raises_on_a_mid_stream_failure(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="error"))
    with pytest.raises(openai.APIError):
        async with sdk.responses.stream(model="gpt-4o-mini", input="Say hi") as stream:
            await stream.get_final_response()


async def test_sdk_non_streamed_failure_is_the_sdks_exception(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="error"))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.responses.create(model="gpt-4o-mini", input="Say hi")
    assert caught.value.status_code == 502


async def test_sdk_refusal_is_the_sdks_bad_request(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_1")
    assert "previous_response_id" in str(caught.value)
    assert demo.seen == []


class Given:
    """A fast-path template whose parsed chunk is given (lib.formats.Template)."""

    def __init__(self, like: dict[str, Any]) -> None:
        self.like = like


def test_the_fast_path_writes_what_the_slow_path_writes() -> None:
    """The relay skips parsing plain chunks (lib/relay.py): ``delta`` / ``other_delta`` must
    produce the same events as ``chunk`` (ids aside: they are new for each item)."""

    def choice(delta: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    opening = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}
    script: list[tuple[str, str, dict[str, Any]]] = [
        ("reasoning_content", "hm", choice({"reasoning_content": "hm"})),
        ("reasoning_content", "m", choice({"reasoning_content": "m"})),
        ("content", "Hi", choice({"content": "Hi"})),
        ("content", " you", choice({"content": " you"})),
        ("", "", choice({"tool_calls": [opening]})),
        (
            "arguments",
            "{}",
            choice({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        ),
    ]
    slow, fast = ResponsesStream(Meta("r", 1, "m", {})), ResponsesStream(Meta("r", 1, "m", {}))
    slow_out, fast_out = slow.open(), fast.open()
    for kind, text, chunk in script:
        slow_out += slow.chunk(json.dumps(chunk), chunk)
        if kind == "content":
            fast_out += fast.delta("", text, Given(chunk)) or b""
        elif kind:
            fast_out += fast.other_delta(kind, "", text, Given(chunk)) or b""
        else:
            fast_out += fast.chunk(json.dumps(chunk), chunk)
    slow_out += slow.close()
    fast_out += fast.close()

    def anonymous(raw: bytes) -> bytes:
        return re.sub(rb"(msg|rs|fc)_[0-9a-f]{32}", b"id", raw)

    assert anonymous(fast_out) == anonymous(slow_out)
    assert b"response.function_call_arguments.delta" in slow_out


async def test_sdk_parse_with_a_pydantic_text_format(
    sdk: openai.AsyncOpenAI, demo: DemoUpstream
) -> None:
    class Weather(pydantic.BaseModel):
        city: str
        temp_c: float

    response = await sdk.responses.parse(model="gpt-4o-mini", input="Paris?", text_format=Weather)
    assert response.output_parsed == Weather(city="Paris", temp_c=1.5)
    sent = demo.seen[-1].json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Weather"
    assert sent["json_schema"]["strict"] is True
