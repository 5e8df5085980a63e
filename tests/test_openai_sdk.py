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
from tests.streams import WEATHER_TOOL

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


# --- the whole Chat Completions surface (docs/chat-completions.md) -----------------------------


async def test_sdk_default_call_gets_one_chat_completion(site: Site, demo: DemoUpstream) -> None:
    """No ``stream`` key (the SDK's default): one chat.completion object, not a stream."""
    client, transport = await site()
    demo.push(Scenario(text=TEXT))
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}]
    )
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == TEXT
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert demo.seen[0].json["stream"] is True  # the upstream is still streamed
    body = json.loads(bytes(transport.bodies[-1]))
    assert body["id"] == completion.id


async def test_sdk_default_legacy_completion(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    demo.push(Scenario(text=TEXT))
    completion = await client.completions.create(model="gpt-4o-mini", prompt="Say hi")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == TEXT
    assert completion.choices[0].finish_reason == "stop"


async def test_non_streamed_failure_is_the_status_and_envelope(
    site: Site, demo: DemoUpstream
) -> None:
    """The stream broke before the answer was whole: nothing was sent, so a real status."""
    client, _ = await site()
    demo.push(Scenario(text="a b c d", after=2, ending="reset"))
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "upstream_error"  # type: ignore[index]


async def test_two_step_tool_loop(site: Site, demo: DemoUpstream) -> None:
    """Step 1 streams a tool call the SDK reassembles; step 2 sends the assistant's
    tool_calls (content null) and the tool result, and gets the final answer."""
    client, _ = await site()
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    reason = None
    async for chunk in stream:
        choice = chunk.choices[0]
        reason = choice.finish_reason or reason
        for call in choice.delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function and call.function.name) or ""
            entry["arguments"] += (call.function and call.function.arguments) or ""
    assert reason == "tool_calls"
    call = calls[0]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": "21 C, sunny"})
    final = await client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL]
    )
    assert final.choices[0].message.content == "The tool answered: 21 C, sunny. That is my answer."
    assert demo.seen[1].json["messages"] == messages  # forwarded intact


async def test_non_streamed_tool_call(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert call.id.startswith("call_")


async def test_parse_with_a_pydantic_model(site: Site, demo: DemoUpstream) -> None:
    """``chat.completions.parse``: response_format json_schema is forwarded, the answer parsed."""
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        temp_c: int
        sunny: bool

    client, _ = await site()
    completion = await client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        response_format=Weather,
    )
    parsed = completion.choices[0].message.parsed
    assert parsed == Weather(city="Paris", temp_c=1, sunny=True)
    sent = demo.seen[0].json["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Weather"
    assert sent["json_schema"]["strict"] is True


async def test_reasoning_effort_and_reasoning_deltas(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site()
    demo.push(Scenario(text=TEXT, reasoning="Hmm."))
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "developer", "content": "Think."}, {"role": "user", "content": "Hi"}],
        reasoning_effort="low",
    )
    assert demo.seen[0].json["reasoning_effort"] == "low"
    assert demo.seen[0].json["messages"][0]["role"] == "developer"
    message = completion.choices[0].message
    assert message.content == TEXT
    assert message.model_extra == {"reasoning_content": "Hmm."}  # as the upstream named it


async def test_models_list_and_retrieve(site: Site, demo: DemoUpstream) -> None:
    client, _ = await site(DEFAULT_MODEL="gpt-4o-mini", ALLOWED_MODELS="gpt-4o-mini,openai/o4")
    page = await client.models.list()
    assert [m.id for m in page.data] == ["gpt-4o-mini", "openai/o4"]
    assert all(m.object == "model" for m in page.data)
    model = await client.models.retrieve("openai/o4")  # an id with a slash
    assert model.id == "openai/o4"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-9")
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    assert demo.seen == []


async def test_models_list_needs_a_token_when_the_function_is_protected(site: Site) -> None:
    """The models route answers only callers the function would serve."""
    client, _ = await site(AUTH_TOKENS="another-token-0123456789abcdef")
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    client, _ = await site(AUTH_TOKENS=CALLER_KEY)  # the SDK sends its api_key as the bearer
    assert [m.id for m in (await client.models.list()).data] == ["gpt-4o-mini"]


async def test_unknown_v1_paths_answer_the_json_envelope(site: Site) -> None:
    client, _ = await site()
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model="gpt-4o-mini", input="x")
    assert caught.value.body["type"] == "not_found"  # type: ignore[index]
    assert "/api/v1/embeddings" in caught.value.body["message"]  # type: ignore[index]


async def test_stream_helper_with_structured_output(site: Site, demo: DemoUpstream) -> None:
    """The SDK's ``chat.completions.stream`` helper: streamed JSON, parsed at the end."""
    from pydantic import BaseModel

    class City(BaseModel):
        city: str

    client, _ = await site()
    async with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Which city?"}],
        response_format=City,
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == City(city="Paris")
