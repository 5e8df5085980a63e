"""The Chat Completions request surface end to end: what is forwarded upstream (exactly), what is
refused (400 naming the field), and what a deployment can turn off. The upstream is the demo
upstream on loopback; its record of each request is the proof of what was forwarded."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from dev.demo_upstream import DEMO_REPLY, DemoUpstream, Scenario, tokenize
from lib.config import load_settings
from lib.limits import estimate_prompt_tokens
from lib.request import IMAGE_TOKENS, LOW_DETAIL_IMAGE_TOKENS, parse_request
from tests import streams
from tests.conftest import Function, LogTap
from tests.streams import post
from tests.test_protection import freeze, wait_requests

MakeFunction = Callable[..., Awaitable[Function]]
USER = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER_TOOL = {
    **streams.WEATHER_TOOL,
    "function": {**streams.WEATHER_TOOL["function"], "strict": True},
}
PNG = "data:image/png;base64,iVBORw0KGgo="


async def forwarded(
    http: aiohttp.ClientSession,
    function: Function,
    demo: DemoUpstream,
    body: dict[str, Any],
    query: str = "",
) -> dict[str, Any]:
    resp = await post(http, function.url + query, body)
    assert resp.status == 200, await resp.text()
    await resp.read()
    payload: dict[str, Any] = demo.seen[-1].json
    return payload


async def refused(
    http: aiohttp.ClientSession,
    function: Function,
    demo: DemoUpstream,
    body: dict[str, Any],
    query: str = "",
) -> dict[str, Any]:
    before = len(demo.seen)
    resp = await post(http, function.url + query, body)
    assert resp.status == 400, await resp.text()
    assert len(demo.seen) == before  # never sent upstream
    error: dict[str, Any] = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    return error


# --- forwarded ---------------------------------------------------------------------------------


async def test_every_supported_field_is_forwarded_as_sent(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    fields: dict[str, Any] = {
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
        "verbosity": "medium",
        "user": "user-42",
        "logprobs": True,
        "top_logprobs": 2,
        "n": 1,
        "temperature": 0.5,
        "top_p": 0.9,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "stop": ["\n\n"],
        "seed": 7,
        "max_completion_tokens": 300,
    }
    payload = await forwarded(http, function, demo, {"messages": [USER], **fields})
    for name, value in fields.items():
        assert payload[name] == value, name
    assert "max_tokens" not in payload
    assert payload["messages"] == [USER]


async def test_include_obfuscation_is_forwarded_and_the_padding_relayed_as_sent(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """OpenAI pads every chunk unless the caller says ``include_obfuscation: false``: the
    option goes upstream as sent, beside the usage the deployment asks for, and the chat format
    relays whatever padding comes back."""
    body = {"messages": [USER], "stream_options": {"include_obfuscation": False}}
    resp = await post(http, function.url, body)
    assert resp.status == 200
    unpadded = await resp.read()
    sent = demo.seen[-1].json["stream_options"]
    assert sent == {"include_usage": True, "include_obfuscation": False}
    assert b"obfuscation" not in unpadded
    body["stream_options"] = {"include_obfuscation": True, "include_usage": True}
    resp = await post(http, function.url, body)
    padded = await resp.read()
    assert demo.seen[-1].json["stream_options"] == {
        "include_usage": True,
        "include_obfuscation": True,
    }
    assert padded.count(b'"obfuscation":"') >= len(tokenize(DEMO_REPLY))
    resp = await post(http, function.url, {"messages": [USER]})  # not sent: not forwarded
    await resp.read()
    assert demo.seen[-1].json["stream_options"] == {"include_usage": True}


async def test_null_means_not_sent(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"messages": [USER], "model": None, "temperature": None, "tools": None, "user": None}
    payload = await forwarded(http, function, demo, body)
    assert payload["model"] == "gpt-4o-mini"
    assert not {"temperature", "tools", "user"} & payload.keys()


async def test_max_tokens_goes_in_the_deployment_field(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """OpenAI's current models refuse max_tokens: the default field is max_completion_tokens,
    for the caller's value and for the deployment's cap alike; older servers set the other."""
    function = await make_function()
    payload = await forwarded(http, function, demo, {"messages": [USER]})
    assert payload["max_completion_tokens"] == 1024
    assert "max_tokens" not in payload
    payload = await forwarded(http, function, demo, {"messages": [USER], "max_tokens": 50})
    assert payload["max_completion_tokens"] == 50
    assert "max_tokens" not in payload
    old = await make_function(MAX_TOKENS_FIELD="max_tokens")
    payload = await forwarded(http, old, demo, {"messages": [USER], "max_completion_tokens": 9})
    assert payload["max_tokens"] == 9
    assert "max_completion_tokens" not in payload


async def test_legacy_completions_endpoint_gets_max_tokens(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(PROMPT_ENDPOINT="completions")
    payload = await forwarded(http, function, demo, {"prompt": "Hi"})
    assert payload["max_tokens"] == 1024
    assert "max_completion_tokens" not in payload


async def test_tool_loop_second_turn_is_forwarded_intact(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    history = [
        {"role": "developer", "content": "Use tools when they help."},
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    payload = await forwarded(http, function, demo, {"messages": history, "tools": [WEATHER_TOOL]})
    assert payload["messages"] == history


async def test_assistant_reasoning_in_history_is_not_sent_back(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """@ai-sdk/openai-compatible sends reasoning_content on assistant turns; models are not
    sent their own thoughts (several providers refuse them as input)."""
    history = [
        USER,
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "Let me think."},
        {"role": "user", "content": "Thanks"},
    ]
    payload = await forwarded(http, function, demo, {"messages": history})
    assert payload["messages"][1] == {"role": "assistant", "content": "Sunny."}


async def test_image_parts_are_forwarded(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    message = {"role": "user", "content": content}
    payload = await forwarded(http, function, demo, {"messages": [message]})
    assert payload["messages"] == [message]


async def test_text_only_part_lists_are_joined(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """Older servers take only a string; a list of text parts says the same."""
    message = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    payload = await forwarded(http, function, demo, {"messages": [message]})
    assert payload["messages"] == [{"role": "user", "content": "ab"}]


async def test_ui_transport_fields_are_ignored_only_in_use_chat_bodies(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    ui = {"role": "user", "parts": [{"type": "text", "text": "Hi"}]}
    body = {"id": "c1", "trigger": "submit-message", "messageId": None, "messages": [ui]}
    payload = await forwarded(http, function, demo, body)
    assert not {"id", "trigger", "messageId"} & payload.keys()
    error = await refused(http, function, demo, {"id": "c1", "messages": [USER]})
    assert error["param"] == "id"


async def test_ignored_params_setting_covers_the_apps_own_fields(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(IGNORED_PARAMS="sessionId, theme")
    payload = await forwarded(
        http, function, demo, {"messages": [USER], "sessionId": "s", "theme": "dark"}
    )
    assert not {"sessionId", "theme"} & payload.keys()
    error = await refused(http, function, demo, {"messages": [USER], "other": 1})
    assert error["param"] == "other"


# --- refused -----------------------------------------------------------------------------------

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", {"messages": [USER], "store": True}, "store"),
    ("unknown message field", {"messages": [{**USER, "audio": {}}]}, "messages[0].audio"),
    ("n above 1", {"messages": [USER], "n": 2}, "n"),
    ("tools for a prompt", {"prompt": "Hi", "tools": [WEATHER_TOOL]}, "tools"),
    ("logprobs for a prompt", {"prompt": "Hi", "logprobs": True}, "logprobs"),
    ("tool not a function", {"messages": [USER], "tools": [{"type": "x"}]}, "tools[0]"),
    (
        "bad tool name",
        {"messages": [USER], "tools": [{"type": "function", "function": {"name": "a b"}}]},
        "tools[0].function.name",
    ),
    (
        "tool_choice names no tool",
        {
            "messages": [USER],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "other"}},
        },
        "tool_choice",
    ),
    ("tool_choice without tools", {"messages": [USER], "tool_choice": "auto"}, "tool_choice"),
    (
        "bad response_format",
        {"messages": [USER], "response_format": {"type": "xml"}},
        "response_format",
    ),
    ("bad reasoning_effort", {"messages": [USER], "reasoning_effort": "max"}, "reasoning_effort"),
    ("top_logprobs alone", {"messages": [USER], "top_logprobs": 2}, "top_logprobs"),
    (
        "both max fields differ",
        {"messages": [USER], "max_tokens": 5, "max_completion_tokens": 6},
        "max_tokens",
    ),
    (
        "stream_options unknown key",
        {"messages": [USER], "stream_options": {"x": 1}},
        "stream_options.x",
    ),
    (
        "stream_options.include_obfuscation not a boolean",
        {"messages": [USER], "stream_options": {"include_obfuscation": "no"}},
        "stream_options.include_obfuscation",
    ),
    (
        "assistant null content without tool calls",
        {"messages": [USER, {"role": "assistant", "content": None}]},
        "messages[1].content",
    ),
    (
        "tool message without id",
        {"messages": [{"role": "tool", "content": "x"}]},
        "messages[0].tool_call_id",
    ),
    (
        "image in a system message",
        {
            "messages": [
                {"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}
            ]
        },
        "messages[0].content[0].type",
    ),
    (
        "image scheme not allowed",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        "data URL that is not an image",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:text/html;base64,PGI+"}}
                    ],
                }
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        "useChat non-image file",
        {
            "messages": [
                {
                    "role": "user",
                    "parts": [
                        {
                            "type": "file",
                            "mediaType": "application/pdf",
                            "url": "data:application/pdf;base64,AA==",
                        }
                    ],
                }
            ]
        },
        "messages[0].parts[0].mediaType",
    ),
    (
        "useChat tool part without output",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "parts": [
                        {
                            "type": "tool-get_weather",
                            "toolCallId": "c1",
                            "state": "input-available",
                            "input": {},
                        }
                    ],
                },
            ]
        },
        "messages[1].parts[0].state",
    ),
]


# Values of the wrong type where a name or an enum is expected (unhashable ones included).
REFUSED += [
    (
        "tool_choice name a list",
        {
            "messages": [USER],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": ["get_weather"]}},
        },
        "tool_choice",
    ),
    (
        "response_format type a list",
        {"messages": [USER], "response_format": {"type": []}},
        "response_format",
    ),
    (
        "image detail a list",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": PNG, "detail": []}}],
                }
            ]
        },
        "messages[0].content[0].image_url.detail",
    ),
    (
        "tool part state a dict",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "parts": [{"type": "tool-x", "toolCallId": "c", "state": {}}],
                },
            ]
        },
        "messages[1].parts[0].state",
    ),
]


@pytest.mark.parametrize(("name", "body", "param"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_refused_with_the_field_named(
    function: Function,
    demo: DemoUpstream,
    http: aiohttp.ClientSession,
    name: str,
    body: dict[str, Any],
    param: str,
) -> None:
    error = await refused(http, function, demo, body)
    assert error["param"] == param, error


async def test_tools_in_the_text_format_are_a_400(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"messages": [USER], "tools": [WEATHER_TOOL]}
    assert (await refused(http, function, demo, body, "?format=text"))["param"] == "tools"
    body = {"messages": [USER], "logprobs": True}
    assert (await refused(http, function, demo, body, "?format=ui"))["param"] == "logprobs"


async def test_allowed_params_restricts_what_is_forwarded(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(ALLOWED_PARAMS="temperature,max_tokens")
    payload = await forwarded(http, function, demo, {"messages": [USER], "temperature": 1})
    assert payload["temperature"] == 1
    error = await refused(http, function, demo, {"messages": [USER], "tools": [WEATHER_TOOL]})
    assert error["param"] == "tools"
    assert "turned off" in error["message"]


async def test_images_can_be_turned_off(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(IMAGE_URL_SCHEMES="none")
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    error = await refused(
        http, function, demo, {"messages": [{"role": "user", "content": content}]}
    )
    assert error["param"] == "messages[0].content[0].image_url.url"
    assert "turned off" in error["message"]


async def test_large_bodies_are_allowed_only_with_images(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    function = await make_function(MAX_BODY_BYTES="2000", MAX_IMAGE_BODY_BYTES="10000")
    big_image = "data:image/png;base64," + "A" * 5000
    content = [
        {"type": "text", "text": "What?"},
        {"type": "image_url", "image_url": {"url": big_image}},
    ]
    payload = await forwarded(
        http, function, demo, {"messages": [{"role": "user", "content": content}]}
    )
    assert payload["messages"][0]["content"][1]["image_url"]["url"] == big_image
    resp = await post(http, function.url, {"messages": [{"role": "user", "content": "a" * 5000}]})
    assert resp.status == 413
    await resp.read()
    content[1] = {"type": "image_url", "image_url": {"url": big_image + "A" * 6000}}
    resp = await post(http, function.url, {"messages": [{"role": "user", "content": content}]})
    assert resp.status == 413
    await resp.read()


def test_token_estimate_has_an_image_allowance() -> None:
    settings = load_settings({"OPENAI_API_KEY": "k"}).request
    text_only = parse_request({"messages": [{"role": "user", "content": "hi"}]}, settings)
    images = [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
    ]
    with_images = parse_request({"messages": [{"role": "user", "content": images}]}, settings)
    extra = estimate_prompt_tokens(with_images) - estimate_prompt_tokens(text_only)
    assert extra == IMAGE_TOKENS + LOW_DETAIL_IMAGE_TOKENS  # the data URL's length is not text


def test_settings_are_checked() -> None:
    from lib.config import SettingsError

    for env in (
        {"ALLOWED_PARAMS": "temperature,prompt"},
        {"MAX_TOKENS_FIELD": "max"},
        {"IMAGE_URL_SCHEMES": "ftp"},
        {"IGNORED_PARAMS": "tools"},
    ):
        with pytest.raises(SettingsError):
            load_settings(env)
    assert json.dumps(sorted(load_settings({}).request.image_url_schemes)) == '["data", "https"]'


# --- non-streaming callers ----------------------------------------------------------------------


async def test_stream_false_gets_one_json_object_and_no_stream_key_still_streams(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """At /api/generate a body without ``stream`` streams (the browser helpers and the AI SDK
    hooks never send it); ``stream: false`` gets the whole answer as one object."""
    resp = await post(http, function.url, {"messages": [USER], "stream": False})
    assert resp.headers["Content-Type"] == "application/json"
    whole = await resp.json()
    assert whole["object"] == "chat.completion"
    assert whole["choices"][0]["message"]["content"] == demo.reply
    assert whole["usage"]["completion_tokens"] > 0
    resp = await post(http, function.url, {"prompt": "Hi", "stream": False})
    whole = await resp.json()
    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == demo.reply
    resp = await post(http, function.url, {"prompt": "Hi"})
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    await resp.read()


async def test_stream_false_in_a_streaming_only_format_is_a_400(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    for query in ("?format=ui", "?format=text"):
        error = await refused(http, function, demo, {"prompt": "Hi", "stream": False}, query)
        assert error["param"] == "stream"


async def test_non_streamed_answer_is_under_the_stream_limits(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    """A stalled upstream hits the idle limit as a stream would; the caller gets the status."""
    function = await make_function(UPSTREAM_IDLE_TIMEOUT="0.2")
    demo.push(Scenario(text="a b c", after=1, ending="stall"))
    resp = await post(http, function.url, {"messages": [USER], "stream": False})
    assert resp.status == 504
    assert (await resp.json())["error"]["type"] == "upstream_timeout"


# --- abuse monitoring ---------------------------------------------------------------------------

SECRET = "s" * 40


async def test_safety_identifier_is_the_hashed_client_id_when_protection_is_on(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    from lib.auth import mint_token
    from lib.request import safety_identifier

    function = await make_function(AUTH_SIGNING_SECRET=SECRET)
    seen = []
    for user in ("user-42", "user-43"):
        token = mint_token(SECRET, ttl=600, client_id=user)
        resp = await post(
            http, function.url, {"messages": [USER]}, headers={"Authorization": f"Bearer {token}"}
        )
        await resp.read()
        seen.append(demo.seen[-1].json["safety_identifier"])
    assert seen[0] == safety_identifier("user:user-42", SECRET)
    assert seen[0] != seen[1]
    assert "user-42" not in seen[0]  # the provider learns no user id
    token = mint_token(SECRET, ttl=600, client_id="user-42")
    resp = await post(
        http,
        function.url,
        {"messages": [USER], "safety_identifier": "spoofed"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "safety_identifier"


async def test_without_protection_the_callers_safety_identifier_is_forwarded(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    payload = await forwarded(http, function, demo, {"messages": [USER]})
    assert "safety_identifier" not in payload
    body = {"messages": [USER], "safety_identifier": "app-user-7"}
    payload = await forwarded(http, function, demo, body)
    assert payload["safety_identifier"] == "app-user-7"


def test_whole_response_gathers_interleaved_calls_logprobs_and_refusal() -> None:
    from lib.formats import WholeResponse

    whole = WholeResponse(shape="chat")
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"}

    def feed(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> None:
        chunk = {
            **head,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, **extra}],
        }
        assert whole.chunk(json.dumps(chunk), chunk) == b""  # nothing goes out before the end

    call = {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}
    feed({"role": "assistant", "content": None, "tool_calls": [call]})
    feed({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]})
    feed({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]})
    feed({"refusal": "No."}, logprobs={"content": [{"token": "No", "logprob": -0.1}]})
    feed({}, "tool_calls")
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    whole.chunk("", {**head, "choices": [], "usage": usage})
    body = json.loads(whole.close())
    assert body == {
        "id": "c1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x":1}'},
                        },
                        {
                            "id": "b",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        },
                    ],
                    "refusal": "No.",
                },
                "logprobs": {"content": [{"token": "No", "logprob": -0.1}]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": usage,
    }


def test_logged_prompt_shows_images_as_a_marker() -> None:
    settings = load_settings({"OPENAI_API_KEY": "k"}).request
    content = [
        {"type": "text", "text": "What is "},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    request = parse_request({"messages": [{"role": "user", "content": content}]}, settings)
    assert request.text_for_log() == "What is [image]"


async def test_a_non_streamed_answer_that_fails_is_still_charged(
    make_function: MakeFunction, demo: DemoUpstream, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    """With ``stream: false`` nothing is sent before the answer is whole, but the upstream
    accepted the request and spent tokens: a failure on the way is charged, not refunded."""
    function = await make_function(TOKEN_BUDGET="5000/day")
    freeze(function)
    demo.push(Scenario(text="a b c d", after=2, ending="reset"))
    resp = await post(http, function.url, {"prompt": "hello there", "stream": False})
    assert resp.status == 502
    await resp.read()
    line = (await wait_requests(logs, 1))[-1]
    # the prompt estimate (11 UTF-8 bytes, 4 per message, 3 for the reply's priming), plus one
    # per chunk read: the role chunk and two with text
    assert line["tokens_charged"] == 11 + 4 + 3 + 3
