"""Reading the function's output as clients do, for the tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

# The one tool the tool-call tests offer: its parameters, and the tool in the Chat Completions
# shape (tests/test_responses.py has it in the Responses API's).
CITY_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": CITY_PARAMETERS,
    },
}


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    raw = data if data is not None else json.dumps(body).encode()
    return await http.post(
        url, data=raw, headers={"Content-Type": "application/json", **(headers or {})}
    )


def canonical_events(raw: bytes) -> list[str]:
    """Split canonical output into event data, asserting the framing on the way: every event is
    exactly one ``data: `` line of ASCII followed by one blank line, LF only."""
    assert raw.endswith(b"\n\n"), raw[-80:]
    assert b"\r" not in raw
    raw.decode("ascii")
    events = []
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: "), block[:80]
        assert b"\n" not in block, block[:80]
        events.append(block[len(b"data: ") :].decode("ascii"))
    return events


def chunks(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in events if e != "[DONE]"]


def completion_text(events: list[str]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks(events) if c.get("choices"))


def chat_text(events: list[str]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks(events) if c.get("choices")
    )


async def read_until(resp: aiohttp.ClientResponse, needle: bytes, count: int = 1) -> bytes:
    """Read until ``needle`` occurred ``count`` times; fails (never hangs) if the stream ends or
    stays silent for 5 s."""
    received = b""
    while received.count(needle) < count:
        piece = await asyncio.wait_for(resp.content.readany(), 5)
        assert piece, f"stream ended before {needle!r} x{count}: {received[-200:]!r}"
        received += piece
    return received
