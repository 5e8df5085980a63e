"""Token budgets hold within 10% for any script, for streams that finish and streams whose
caller hangs up before the usage chunk, in waves of concurrent requests.

The upstream here reports the worst case any byte-level BPE tokenizer can reach: one token per
UTF-8 byte of the prompt. It also records what each request really cost (prompt plus every
event it wrote, those in flight when the caller hung up included), so the test compares the
budget with what was really spent, not with the function's own ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lib.config import load_settings
from lib.handler import GenerateHandler
from tests.conftest import CANARY_KEY, LogTap, serve_asgi
from tests.streams import post, read_until

BUDGET = 20_000
SCRIPTS = {
    "chinese": "数据以流的方式传输给调用者",
    "hindi": "नमस्ते दुनिया, यह एक परीक्षण है। ",
    "emoji": "🚀🌍🎉",
    "english": "Stream the answer as it arrives. ",
}
CHUNK = '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":%s%s}'


class WorstCaseUpstream:
    """Streams one event, then either four more, the finish and the usage (one token per
    prompt byte), or, for a prompt ending in ``?``, nothing more until the caller leaves."""

    def __init__(self) -> None:
        self.spent: list[int] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        text = "".join(m["content"] for m in payload["messages"])
        prompt_tokens = len(text.encode("utf-8"))
        written = 0
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(1 if text.endswith("?") else 5):
                delta = '[{"index":0,"delta":{"content":"x"},"finish_reason":null}]'
                await response.write(f"data: {CHUNK % (delta, '')}\n\n".encode())
                written += 1
            if text.endswith("?"):
                await asyncio.Event().wait()  # until the function closes the connection
            stop = '[{"index":0,"delta":{},"finish_reason":"stop"}]'
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": written,
                "total_tokens": prompt_tokens + written,
            }
            tail = f"data: {CHUNK % (stop, '')}\n\n"
            tail += f"data: {CHUNK % ('[]', ',"usage":' + json.dumps(usage))}\n\ndata: [DONE]\n\n"
            await response.write(tail.encode())
        finally:
            self.spent.append(prompt_tokens + written)
        return response


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
async def test_waves_of_finished_and_cut_streams_spend_at_most_the_budget_plus_10_percent(
    script: str,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    upstream = WorstCaseUpstream()
    server = await aiohttp_server(upstream.app)
    settings = load_settings(
        {
            "OPENAI_API_KEY": CANARY_KEY,
            "OPENAI_BASE_URL": str(server.make_url("/v1")),
            "TOKEN_BUDGET": f"{BUDGET}/day",
            "UPSTREAM_MAX_RETRIES": "0",
        }
    )
    handler = GenerateHandler(settings)
    assert handler.limiter is not None
    handler.limiter.clock = lambda: 20_834 * 86_400.0 + 10  # one budget window for the test
    url, stop = await serve_asgi(handler)
    text = (script * 300)[:300]

    async def one(cut: bool) -> int:
        body = {"messages": [{"role": "user", "content": text + ("?" if cut else ".")}]}
        resp = await post(http, url + "/api/generate", body, headers={})
        if resp.status == 200 and cut:
            await read_until(resp, b'"content":"x"')
            resp.close()  # the caller hangs up before the usage chunk
        else:
            await resp.read()
        return resp.status

    try:
        answered = 0
        for _ in range(20):  # waves of 10 concurrent requests, half of them cut
            statuses = await asyncio.gather(*(one(cut=i % 2 == 1) for i in range(10)))
            answered += 10
            await logs.requests(answered)  # every stream of this wave is settled
            assert set(statuses) <= {200, 429}
            if 200 not in statuses:
                break
        else:
            pytest.fail("the budget never ran out")
        assert len(upstream.spent) >= 10  # the budget was really used, by both kinds
        assert sum(upstream.spent) <= BUDGET * 1.1, (sum(upstream.spent), len(upstream.spent))
    finally:
        await stop()
