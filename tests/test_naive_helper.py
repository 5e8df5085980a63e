"""The classic browser helper's algorithm, run against our output as it arrives.

It decodes each network read on its own (a ``TextDecoder`` without ``{stream: true}``), splits on
blank lines, strips the first ``data: ``, ``JSON.parse``s the rest and appends
``choices[0].text``; it has no buffer across reads. It survives only if every read holds whole
events and no character can be split, which is what canonical framing promises.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from tests.conftest import Function
from tests.streams import post

TEXT = "Grüße, naïve café — 你好 🚀🎉 done."


def naive_helper_step(value: bytes, state: dict[str, object]) -> None:
    chunk = value.decode("utf-8", errors="replace")  # what TextDecoder.decode(value) does
    for part in chunk.split("\n\n"):
        if not part:
            continue
        data = part.replace("data: ", "", 1)
        if data == "[DONE]":
            state["done"] = True
            return
        parsed = json.loads(data)  # a partial event would raise here, as JSON.parse would
        state["text"] = str(state["text"]) + parsed["choices"][0]["text"]


@pytest.mark.parametrize("write", ["event", "byte", "pairs"])
async def test_classic_helper_gets_the_exact_text(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession, write: str
) -> None:
    demo.push(Scenario(text=TEXT, write=write))  # type: ignore[arg-type]
    resp = await post(http, function.url, {"prompt": "x"})
    state: dict[str, object] = {"text": "", "done": False}
    async for value in resp.content.iter_any():
        naive_helper_step(value, state)
    assert state == {"text": TEXT, "done": True}
