"""The ``openai`` Python SDK, unchanged, through ``base_url=<site>/api/v1`` and vercel.json's
rewrites: chat and legacy completions stream, usage arrives when asked for, keep-alives and
in-band errors are handled the SDK's way, and the caller's own key never goes upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2 as httpx  # the HTTP client the openai SDK is built on
import openai
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from dev.serve import Function, LocalPlatform, load_config
from lib.config import PROJECT_ROOT, load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, serve_asgi

CALLER_KEY = "sk-caller-own-key-0123456789abcdef"
TEXT = "Grüße from the SDK 🚀, streamed."


class RecordingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, keeping a copy of every response body as it was read."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.bodies: list[bytearray] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        body = bytearray()
        self.bodies.append(body)
        inner = response.stream
        assert isinstance(inner, httpx.AsyncByteStream)

        class Tee(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for piece in inner:
                    body.extend(piece)
                    yield piece

            async def aclose(self) -> None:
                await inner.aclose()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Tee(),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


Site = Callable[..., Awaitable[tuple[openai.AsyncOpenAI, RecordingTransport]]]


@pytest.fixture
async def site(upstream_url: str) -> AsyncIterator[Site]:
    """The function behind vercel.json's rewrites, and an SDK client pointed at ``/api/v1``."""
    stops = []
    clients: list[openai.AsyncOpenAI] = []

    async def start(**env: str) -> tuple[openai.AsyncOpenAI, RecordingTransport]:
        environ = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": upstream_url, **env}
        handler = GenerateHandler(load_settings(environ))
        # The local server's routing, reading the project's own vercel.json rewrites.
        platform = LocalPlatform(
            PROJECT_ROOT,
            load_config(PROJECT_ROOT / "vercel.json"),
            {"/api/generate": Function("api/generate.py", handler, None)},
        )
        url, stop = await serve_asgi(platform)
        stops.append(stop)
        transport = RecordingTransport()
        client = openai.AsyncOpenAI(
            api_key=CALLER_KEY,
            base_url=url + "/api/v1",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport),
        )
        clients.append(client)
        return client, transport

    yield start
    for client in clients:
        await client.close()
    for stop in stops:
        await stop()


async def chat_text(client: openai.AsyncOpenAI, **extra: Any) -> tuple[str, list[Any]]:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hi"}],
        stream=True,
        **extra,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def test_chat_streams_through_the_rewrite(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    demo.push(Scenario(text=TEXT))
    text, chunks = await chat_text(client)
    assert text == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    seen = demo.seen[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {CANARY_KEY}"  # the server's key only
    assert CALLER_KEY not in json.dumps(dict(seen.headers)) + seen.body.decode()


async def test_usage_reaches_the_sdk_only_when_asked(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    _, chunks = await chat_text(client)
    assert all(c.choices for c in chunks)  # the upstream's usage chunk was for us only
    _, chunks = await chat_text(client, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_openai_format_even_when_the_deployment_default_is_another(
    site: Site, demo: DemoUpstream
) -> None:
    client, _ = await site(DEFAULT_FORMAT="text")  # the rewrite pins format=openai
    demo.push(Scenario(text=TEXT))
    text, _ = await chat_text(client)
    assert text == TEXT


async def test_legacy_completions_stream(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    demo.push(Scenario(text=TEXT))
    stream = await client.completions.create(model="gpt-4o-mini", prompt="Say hi", stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT
    assert all(c.object == "text_completion" for c in chunks)


async def test_keepalive_comments_are_ignored_by_the_sdk(site: Site, demo: DemoUpstream) -> None:
    client, transport = await site(KEEPALIVE_INTERVAL="0.05")
    demo.push(Scenario(text=TEXT, silence_before_first=0.3))
    text, _ = await chat_text(client)
    assert text == TEXT
    assert b": keep-alive\n\n" in transport.bodies[-1]  # they were there, and did no harm


async def test_mid_stream_error_raises_in_the_sdk(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    demo.push(Scenario(text="a b c d", after=2, ending="reset"))
    with pytest.raises(openai.APIError):
        await chat_text(client)


async def test_errors_before_the_stream_are_the_sdks_exceptions(
    site: Site, demo: DemoUpstream
) -> None:
    client, _ = await site()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="not-allowed", messages=[{"role": "user", "content": "x"}], stream=True
        )
    assert "model must be one of" in str(caught.value)
    assert demo.seen == []
