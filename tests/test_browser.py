"""A real Chromium (Debian's, driven by playwright-core) loads the demo page from one origin and
streams from the function on another: the text appears as it is generated, completely, Stop
aborts the request all the way to the upstream, and an origin not on the list is refused."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dev.demo_upstream import REASONING, DemoUpstream, Scenario, tokenize
from lib.config import PROJECT_ROOT
from tests.conftest import Function
from tests.jsdriver import NodeDriver

pytestmark = pytest.mark.browser

TEXT = "Streaming into the page: Grüße, 你好 🚀 — the end."
MakeFunction = Callable[..., Awaitable[Function]]


@pytest.fixture(scope="module")
def browser() -> Iterator[NodeDriver]:
    """One node process, and (on first use) one Chromium, for the whole module."""
    driver = NodeDriver()
    yield driver
    driver.close()


@pytest.fixture
async def site(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    """``public/`` as static files on its own origin (the front end hosted elsewhere)."""
    app = web.Application()
    app.router.add_static("/", PROJECT_ROOT / "public")
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def open_page(node: NodeDriver, site: str, function: Function) -> NodeDriver:
    await node.call("goto", url=f"{site}/index.html?api={function.url}")
    await node.call("fill", selector="#prompt", value="Say something")
    return node


async def test_text_appears_incrementally_and_completely(
    browser: NodeDriver, site: str, make_function: MakeFunction, demo: DemoUpstream
) -> None:
    function = await make_function(ALLOWED_ORIGINS=site)
    gate = asyncio.Event()
    demo.push(Scenario(text=TEXT, gate=gate, gate_after=3))
    node = await open_page(browser, site, function)
    await node.call("click", selector="#generate")
    partial = "".join(tokenize(TEXT)[:3])
    shown = await node.call("wait_text", selector="#output", prefix=partial, length=len(partial))
    assert shown["text"] == partial  # on screen while the model is still "thinking"
    assert (await node.call("text", selector="#status"))["text"] == "Streaming…"
    gate.set()
    await node.call("wait_text", selector="#status", prefix="Done.")
    out = await node.call("text", selector="#output")
    assert out["text"] == TEXT
    assert out["consoleErrors"] == []
    assert demo.seen[0].json["messages"] == [{"role": "user", "content": "Say something"}]


async def test_stop_aborts_the_request_and_the_upstream(
    browser: NodeDriver, site: str, make_function: MakeFunction, demo: DemoUpstream
) -> None:
    function = await make_function(ALLOWED_ORIGINS=site)
    gate = asyncio.Event()  # never set: only Stop can end this stream
    demo.push(Scenario(text=TEXT, gate=gate, gate_after=2))
    node = await open_page(browser, site, function)
    await node.call("click", selector="#generate")
    partial = "".join(tokenize(TEXT)[:2])
    await node.call("wait_text", selector="#output", prefix=partial, length=len(partial))
    seen = demo.seen[0]
    assert not seen.closed.is_set()
    await node.call("click", selector="#stop")
    async with asyncio.timeout(5):
        await seen.closed.wait()  # the upstream saw its connection closed
    await node.call("wait_text", selector="#status", prefix="Stopped.")
    assert (await node.call("text", selector="#output"))["text"] == partial


@pytest.mark.parametrize("fmt", ["", "ui", "text"])
async def test_every_format_through_silence_in_the_browser(
    browser: NodeDriver, site: str, make_function: MakeFunction, demo: DemoUpstream, fmt: str
) -> None:
    # The model "thinks" for 0.3 s while the function pings every 50 ms (comments in ui, empty
    # completion chunks in openai, nothing in text; each shown on the wire in test_clients_js).
    function = await make_function(ALLOWED_ORIGINS=site, KEEPALIVE_INTERVAL="0.05")
    demo.push(Scenario(text=TEXT, silence_before_first=0.3))
    node = await open_page(browser, site, function)
    await node.call("select", selector="#format", value=fmt)
    await node.call("click", selector="#generate")
    await node.call("wait_text", selector="#status", prefix="Done.")
    assert (await node.call("text", selector="#output"))["text"] == TEXT


async def test_an_origin_not_on_the_list_is_refused(
    browser: NodeDriver, site: str, make_function: MakeFunction, demo: DemoUpstream
) -> None:
    function = await make_function(ALLOWED_ORIGINS="https://someone-else.example.com")
    node = await open_page(browser, site, function)
    await node.call("click", selector="#generate")
    status = await node.call("wait_text", selector="#status", prefix="Error:")
    assert "fetch" in status["text"].lower()
    assert demo.seen == []  # the preflight failed, so the POST was never sent


@pytest.mark.parametrize("fmt", ["", "ui"])
async def test_the_chat_shows_reasoning_and_tool_calls(
    browser: NodeDriver, site: str, make_function: MakeFunction, demo: DemoUpstream, fmt: str
) -> None:
    """The demo chat with Think and the weather tool on: the reasoning streams into a fold
    that closes when the answer starts, the tool call shows as a card with its arguments and
    the page's result, and the follow-up answer arrives, in both formats that carry them."""
    function = await make_function(ALLOWED_ORIGINS=site)
    node = await open_page(browser, site, function)
    await node.call("fill", selector="#prompt", value="Weather in Paris?")
    await node.call("select", selector="#format", value=fmt)
    await node.call("click", selector="#think")
    await node.call("click", selector="#tools")
    await node.call("click", selector="#generate")
    await node.call("wait_text", selector="#status", prefix="Done.")
    out = await node.call("text", selector="#output")
    assert (
        out["text"]
        == 'The tool answered: {"city":"Paris","temp_c":21,"sky":"sunny"}. That is my answer.'
    )
    assert out["consoleErrors"] == []
    assert (await node.call("text", selector=".thinking .reasoning"))["text"] == REASONING
    assert (await node.call("count", selector="details.thinking"))["count"] == 2  # both steps
    assert (await node.call("attribute", selector="details.thinking", name="open"))["value"] is None
    await node.call("click", selector="details.thinking summary")  # it unfolds on a click
    assert (await node.call("attribute", selector="details.thinking", name="open"))["value"] == ""
    assert (await node.call("text", selector=".tool-name"))["text"] == "get_weather"
    assert (await node.call("text", selector=".tool-args"))["text"] == '{"city":"Paris"}'
    result = (await node.call("text", selector=".tool-result"))["text"]
    assert result == '→ {"city":"Paris","temp_c":21,"sky":"sunny"}'
    first, second = (seen.json for seen in demo.seen)
    assert first["reasoning_effort"] == "low"
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert second["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["messages"][2]["role"] == "tool"


async def test_the_chat_sends_an_attached_image(
    browser: NodeDriver, site: str, make_function: MakeFunction, demo: DemoUpstream
) -> None:
    function = await make_function(ALLOWED_ORIGINS=site)
    demo.push(Scenario(text="A red dot."))
    node = await open_page(browser, site, function)
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    await node.call("upload", selector="#image", name="dot.png", mimeType="image/png", base64=png)
    await node.call("wait_text", selector="#attached", prefix="dot.png")
    await node.call("fill", selector="#prompt", value="What is this?")
    await node.call("click", selector="#generate")
    await node.call("wait_text", selector="#status", prefix="Done.")
    assert (await node.call("text", selector="#output"))["text"] == "I see 1 image. A red dot."
    (message,) = demo.seen[0].json["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
    ]
    assert (await node.call("count", selector=".user .bubble img"))["count"] == 1
