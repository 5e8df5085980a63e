"""The real JavaScript clients against the running function, unchanged: the Vercel AI SDK
(``callCompletionApi`` with both protocols, ``DefaultChatTransport`` and
``TextStreamChatTransport`` under the SDK's own ``AbstractChat``), ``eventsource-parser``, and our
``public/stream.js`` (under node here; in Chromium in ``test_browser.py``). Versions are pinned
by ``tests/js/package-lock.json``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from tests.conftest import Function
from tests.jsdriver import NodeDriver
from tests.streams import post
from tests.test_naive_helper import naive_helper_step

pytestmark = pytest.mark.node

TEXT = "Grüße, naïve café — 你好 🚀 done."
MakeFunction = Callable[..., Awaitable[Function]]


# -- useCompletion's callCompletionApi -------------------------------------------------------


@pytest.mark.parametrize(("protocol", "query"), [("data", "?format=ui"), ("text", "?format=text")])
async def test_call_completion_api(
    node: NodeDriver, function: Function, demo: DemoUpstream, protocol: str, query: str
) -> None:
    demo.push(Scenario(text=TEXT))
    out = await node.call(
        "completion", api=function.url + query, prompt="Hi", streamProtocol=protocol
    )
    assert out["error"] is None
    assert out["result"] == TEXT
    assert out["completion"] == TEXT
    assert demo.seen[0].json["messages"] == [{"role": "user", "content": "Hi"}]


async def test_call_completion_api_with_the_ui_default(
    node: NodeDriver, make_function: MakeFunction, demo: DemoUpstream
) -> None:
    function = await make_function(DEFAULT_FORMAT="ui")  # then the plain URL works as is
    out = await node.call("completion", api=function.url, prompt="Hi", streamProtocol="data")
    assert out["error"] is None
    assert out["result"] == demo.reply


@pytest.mark.parametrize(("protocol", "query"), [("data", "?format=ui"), ("text", "?format=text")])
async def test_call_completion_api_shows_the_error_body(
    node: NodeDriver, function: Function, protocol: str, query: str
) -> None:
    out = await node.call(
        "completion", api=function.url + query, prompt="   ", streamProtocol=protocol
    )
    assert out["status"] == 400
    assert "prompt must be a non-empty string" in out["error"]
    assert out["result"] is None


async def test_call_completion_api_mid_stream_error(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="reset"))
    out = await node.call(
        "completion", api=function.url + "?format=ui", prompt="Hi", streamProtocol="data"
    )
    assert "upstream" in out["error"]
    assert out["result"] is None
    assert out["completion"] == "a b"


async def test_call_completion_api_text_protocol_sees_a_broken_stream(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text="a b c d", after=2, ending="reset"))
    out = await node.call(
        "completion", api=function.url + "?format=text", prompt="Hi", streamProtocol="text"
    )
    assert out["error"]  # never a clean end that looks like a complete answer
    assert out["result"] is None
    assert out["completion"] == "a b"


# -- useChat's transports ------------------------------------------------------------------------


async def test_default_chat_transport(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text=TEXT))
    out = await node.call("chat", api=function.url, text="Hello there", transport="default")
    assert out == {
        "status": "ready",
        "error": None,
        "text": TEXT,
        "parts": out["parts"],
        "finish": {"finishReason": "stop", "isError": False},
        "raw": out["raw"],
    }
    body = demo.seen[0].json
    assert body["messages"] == [{"role": "user", "content": "Hello there"}]


async def test_text_stream_chat_transport(
    node: NodeDriver, function: Function, demo: DemoUpstream
) -> None:
    demo.push(Scenario(text=TEXT))
    out = await node.call(
        "chat", api=function.url + "?format=text", text="Hello there", transport="text"
    )
    assert out["status"] == "ready"
    assert out["error"] is None
    assert out["text"] == TEXT
    assert out["raw"] == TEXT


async def test_chat_errors(
    node: NodeDriver, make_function: MakeFunction, demo: DemoUpstream
) -> None:
    function = await make_function(MAX_PROMPT_CHARS="5")
    out = await node.call("chat", api=function.url, text="far too long", transport="default")
    assert out["status"] == "error"
    assert "the limit is 5" in out["error"]
    demo.push(Scenario(text="a b c d", after=2, ending="error"))
    out = await node.call("chat", api=function.url, text="Hi", transport="default")
    assert out["status"] == "error"
    assert "upstream failed mid-stream" in out["error"]
    assert out["text"] == "a b"


# -- eventsource-parser and stream.js on the OpenAI format ---------------------------------------


@pytest.mark.parametrize(
    ("body", "read"),
    [
        ({"prompt": "x"}, lambda c: c["choices"][0]["text"]),
        ({"messages": [{"role": "user", "content": "x"}]}, lambda c: c["choices"][0]["delta"]),
    ],
)
async def test_eventsource_parser_reads_the_openai_format(
    node: NodeDriver,
    function: Function,
    demo: DemoUpstream,
    body: dict[str, Any],
    read: Callable[[dict[str, Any]], Any],
) -> None:
    demo.push(Scenario(text=TEXT, write="byte"))
    out = await node.call("eventsource", url=function.url, body=body)
    assert out["status"] == 200
    assert out["events"][-1] == "[DONE]"
    chunks = [json.loads(e) for e in out["events"][:-1]]
    pieces = [read(c) for c in chunks]
    text = "".join(p if isinstance(p, str) else p.get("content") or "" for p in pieces)
    assert text == TEXT


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("", {"prompt": "x"}),
        ("", {"messages": [{"role": "user", "content": "x"}]}),
        ("?format=ui", {"prompt": "x"}),
        ("?format=text", {"prompt": "x"}),
    ],
)
async def test_stream_js_reads_every_format(
    node: NodeDriver, function: Function, demo: DemoUpstream, query: str, body: dict[str, Any]
) -> None:
    demo.push(Scenario(text=TEXT, write="pairs"))
    out = await node.call("streamjs", url=function.url + query, body=body)
    assert out["error"] is None
    assert out["text"] == TEXT
    assert "".join(out["deltas"]) == TEXT
    if query != "?format=text":  # text deltas are network reads; SSE ones are events
        assert len(out["deltas"]) > 1  # one callback per delta, not one at the end


@pytest.mark.parametrize(
    ("query", "scenario", "message"),
    [
        ("", Scenario(status=429), "Rate limit"),
        ("?format=ui", Scenario(text="a b c", after=1, ending="reset"), "upstream"),
        ("", Scenario(text="a b c", after=1, ending="error"), "upstream failed mid-stream"),
        ("?format=text", Scenario(text="a b c", after=1, ending="reset"), "connection broke"),
    ],
)
async def test_stream_js_surfaces_errors(
    node: NodeDriver,
    function: Function,
    demo: DemoUpstream,
    query: str,
    scenario: Scenario,
    message: str,
) -> None:
    demo.push(scenario)
    out = await node.call("streamjs", url=function.url + query, body={"prompt": "x"})
    assert out["text"] is None
    assert out["name"] == "StreamError"
    assert message in out["error"]


async def test_stream_js_parser_is_spec_correct_at_every_split(node: NodeDriver) -> None:
    stream = (
        ": comment\r\ndata: a\r\ndata: b\r\n\r\n"
        "event: x\rid: 1\rdata: é\r\rretry: 5\ndata\n\ndata:  two spaces\n\n"
        "data: lost, never terminated"
    )
    expected = ["a\nb", "é", "", " two spaces"]
    feeds = [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]
    feeds.append(list(stream))
    results = await node.call("streamjs", feeds=feeds)
    for feed, events in zip(feeds, results, strict=True):
        assert events == expected, feed


# -- keep-alives, against each client -----------------------------------------------------------


@pytest.fixture
async def silent_first(make_function: MakeFunction, demo: DemoUpstream) -> Function:
    """A function that pings every 50 ms, and an upstream that thinks for 300 ms first."""
    demo.push(*[Scenario(text=TEXT, silence_before_first=0.3) for _ in range(2)])
    return await make_function(KEEPALIVE_INTERVAL="0.05")


async def test_keepalive_ai_sdk_data_protocol(node: NodeDriver, silent_first: Function) -> None:
    out = await node.call(
        "completion", api=silent_first.url + "?format=ui", prompt="Hi", streamProtocol="data"
    )
    assert out["error"] is None
    assert out["result"] == TEXT
    assert ": keep-alive\n\n" in out["raw"]
    out = await node.call("chat", api=silent_first.url, text="Hi", transport="default")
    assert out["error"] is None
    assert out["text"] == TEXT
    assert ": keep-alive\n\n" in out["raw"]


async def test_keepalive_ai_sdk_text_protocol(node: NodeDriver, silent_first: Function) -> None:
    out = await node.call(
        "completion", api=silent_first.url + "?format=text", prompt="Hi", streamProtocol="text"
    )
    assert out["result"] == TEXT
    assert out["raw"] == TEXT  # the text format has no invisible keep-alive: nothing extra
    out = await node.call(
        "chat", api=silent_first.url + "?format=text", text="Hi", transport="text"
    )
    assert out["text"] == TEXT


async def test_keepalive_eventsource_parser_and_stream_js(
    node: NodeDriver, silent_first: Function
) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    out = await node.call("eventsource", url=silent_first.url, body=body)
    chunks = [json.loads(e) for e in out["events"][:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == TEXT
    out = await node.call("streamjs", url=silent_first.url, body={"prompt": "x"})
    assert out["text"] == TEXT


async def test_keepalive_naive_helper(silent_first: Function, http: aiohttp.ClientSession) -> None:
    resp = await post(http, silent_first.url, {"prompt": "x"})
    state: dict[str, object] = {"text": "", "done": False}
    raw = b""
    async for value in resp.content.iter_any():
        raw += value
        naive_helper_step(value, state)
    assert state == {"text": TEXT, "done": True}
    assert b'"id":"keepalive"' in raw  # pings were sent, in a form the helper survives
