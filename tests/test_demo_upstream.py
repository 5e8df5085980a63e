"""The demo upstream speaks OpenAI's streaming protocol and misbehaves exactly as scripted.

Real server on loopback, real aiohttp client. Where the property lives below HTTP (write
granularity shows as HTTP/1.1 chunk boundaries) a raw socket reads the wire.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from dev.demo_upstream import (
    DEMO_REPLY,
    DemoUpstream,
    Scenario,
    refusing_base_url,
    start_demo_upstream,
    tokenize,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BODY: dict[str, Any] = {
    "model": "m-1",
    "stream": True,
    "messages": [{"role": "user", "content": "hi there"}],
}
ROOT = Path(__file__).resolve().parents[1]
GUARD = 5  # seconds: a hang fails the test instead of stalling the suite; nothing waits this long

Client = TestClient[Any, Any]


@pytest.fixture
def demo() -> DemoUpstream:
    return DemoUpstream(pace=0)


@pytest.fixture
async def client(demo: DemoUpstream, aiohttp_client: Any) -> Client:
    c: Client = await aiohttp_client(demo.app)
    return c


class Events:
    """Reads SSE `data:` payloads off a response as they arrive (test-side, LF framing)."""

    def __init__(self, resp: aiohttp.ClientResponse, eol: bytes = b"\n") -> None:
        self.resp = resp
        self.sep = eol * 2
        self.buf = b""

    async def next(self) -> str | None:
        while self.sep not in self.buf:
            async with asyncio.timeout(GUARD):
                chunk = await self.resp.content.readany()
            if not chunk:
                assert self.buf == b"", f"stream ended mid-event: {self.buf!r}"
                return None
            self.buf += chunk
        frame, self.buf = self.buf.split(self.sep, 1)
        assert frame.startswith(b"data: "), frame
        return frame[len(b"data: ") :].decode()

    async def rest(self) -> list[str]:
        out = []
        while (data := await self.next()) is not None:
            out.append(data)
        return out


async def stream(client: Client, path: str = CHAT, **body: Any) -> list[str]:
    async with client.post(path, json={**BODY, **body}) as resp:
        assert resp.status == 200
        return await Events(resp).rest()


def content_of(events: list[str]) -> str:
    text = ""
    for data in events:
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices", []):
            text += choice.get("text") or choice.get("delta", {}).get("content") or ""
    return text


# --- the reply and its tokens -------------------------------------------------------------


@given(st.text())
def test_tokenize_reassembles_any_text(text: str) -> None:
    assert "".join(tokenize(text)) == text


def test_tokenize_attaches_spaces_and_is_deterministic() -> None:
    assert tokenize("Hello, wörld  ok ") == ["Hello", ",", " wörld", "  ok", " "]
    assert tokenize(DEMO_REPLY) == tokenize(DEMO_REPLY)


def test_demo_reply_exercises_multibyte_utf8() -> None:
    assert "ö" in DEMO_REPLY
    assert "—" in DEMO_REPLY
    assert any(len(ch.encode()) == 4 for ch in DEMO_REPLY)
    assert len(tokenize(DEMO_REPLY)) > 10


# --- the protocol ---------------------------------------------------------------------------


async def test_chat_stream_has_openai_shape(client: Client) -> None:
    async with client.post(CHAT, json=BODY) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert "Content-Encoding" not in resp.headers
        events = await Events(resp).rest()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-demo1"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == 1700000000
        assert chunk["model"] == "m-1"
        assert "usage" not in chunk
        # The fields OpenAI adds to every chunk, in its order.
        assert chunk["service_tier"] == "default"
        assert chunk["system_fingerprint"] == "fp_demo"
        assert list(chunk) == [
            "id",
            "object",
            "created",
            "model",
            "service_tier",
            "system_fingerprint",
            "choices",
            "obfuscation",
        ]
    # OpenAI's padding: a string that differs in length from chunk to chunk.
    pads = [c["obfuscation"] for c in chunks]
    assert all(isinstance(p, str) and (p.isalnum() or p == "") for p in pads)
    assert len({len(p) for p in pads}) > 5
    first, *middle, last = (c["choices"] for c in chunks)
    opening = {"role": "assistant", "content": ""}
    assert first == [{"index": 0, "delta": opening, "logprobs": None, "finish_reason": None}]
    assert [c[0]["delta"]["content"] for c in middle] == tokenize(DEMO_REPLY)
    assert all(c[0]["finish_reason"] is None and c[0]["logprobs"] is None for c in middle)
    assert last == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


async def test_completion_stream_has_openai_shape(client: Client) -> None:
    events = await stream(client, COMPLETIONS, prompt="Say hi")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert {c["id"] for c in chunks} == {"cmpl-demo1"}
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == tokenize(DEMO_REPLY)
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)
    assert chunks[-1]["choices"] == [
        {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_usage_chunk_only_when_requested(client: Client, path: str) -> None:
    plain = await stream(client, path)
    asked = await stream(client, path, stream_options={"include_usage": True})
    assert not any('"usage"' in e for e in plain)
    assert asked[-1] == "[DONE]"
    usage = json.loads(asked[-2])
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": len(tokenize(DEMO_REPLY)),
                              "total_tokens": 2 + len(tokenize(DEMO_REPLY))}  # fmt: skip
    assert all(json.loads(e)["usage"] is None for e in asked[:-2])  # as OpenAI does


async def test_model_is_echoed_and_ids_count_requests(client: Client) -> None:
    await stream(client)
    events = await stream(client, model="other")
    assert json.loads(events[0])["model"] == "other"
    assert json.loads(events[0])["id"] == "chatcmpl-demo2"


async def test_models_are_listed(client: Client) -> None:
    async with client.get("/v1/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    assert len(body["data"]) >= 2
    assert all(m["object"] == "model" and isinstance(m["id"], str) for m in body["data"])


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (b"{not json", None),
        (b"[1]", None),
        (b'{"model":"m"}', "stream"),
        (b'{"stream":"yes"}', "stream"),
    ],
)
async def test_bad_requests_get_openai_400_and_leave_scenarios_queued(
    client: Client, demo: DemoUpstream, data: bytes, param: str | None
) -> None:
    demo.push(Scenario(status=503))
    async with client.post(CHAT, data=data, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    async with client.post(CHAT, json=BODY) as resp:
        assert resp.status == 503


async def test_records_what_it_saw(client: Client, demo: DemoUpstream) -> None:
    headers = {"Authorization": "Bearer sk-test", "X-Extra": "1"}
    async with client.post(CHAT, json=BODY, headers=headers) as resp:
        await resp.read()
    (seen,) = demo.seen
    assert seen.path == CHAT
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.json == BODY
    assert seen.finished.is_set()
    assert not seen.closed.is_set()
    assert seen.events_sent == len(tokenize(DEMO_REPLY)) + 3  # role, finish, [DONE]


async def test_next_request_hands_out_each_request_once_in_order(
    client: Client, demo: DemoUpstream
) -> None:
    await stream(client, model="a")
    waiter = asyncio.ensure_future(demo.next_request())
    assert (await waiter).json["model"] == "a"
    waiter = asyncio.ensure_future(demo.next_request())
    await asyncio.sleep(0)
    assert not waiter.done()  # nothing new has arrived
    await stream(client, model="b")
    async with asyncio.timeout(GUARD):
        assert (await waiter).json["model"] == "b"


# --- scenarios: answers that are not a stream ----------------------------------------------


async def test_error_status_with_default_body_and_extra_headers(
    client: Client, demo: DemoUpstream
) -> None:
    demo.push(Scenario(status=429, headers={"Retry-After": "7", "x-should-retry": "false"}))
    async with client.post(CHAT, json=BODY) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert resp.headers["x-should-retry"] == "false"
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_error_status_with_custom_body(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(status=401, error={"error": {"message": "nope"}}))
    async with client.post(CHAT, json=BODY) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": {"message": "nope"}}


async def test_error_status_as_html_page(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(status=404, content_type="text/html"))
    async with client.post(CHAT, json=BODY) as resp:
        assert resp.status == 404
        assert resp.content_type == "text/html"
        assert "<h1>404 Not Found</h1>" in await resp.text()


@pytest.mark.parametrize(
    ("path", "kind"), [(CHAT, "chat.completion"), (COMPLETIONS, "text_completion")]
)
async def test_200_that_is_not_an_event_stream(
    client: Client, demo: DemoUpstream, path: str, kind: str
) -> None:
    demo.push(Scenario(content_type="application/json", text="Just JSON."))
    async with client.post(path, json=BODY) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert body["object"] == kind
    choice = body["choices"][0]
    assert choice.get("text", choice.get("message", {}).get("content")) == "Just JSON."


# --- scenarios: stream content -----------------------------------------------------------------


async def test_text_and_tokens_replace_the_reply(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(text="Hi there"), Scenario(tokens=["a", "bc"], text="ignored"))
    assert content_of(await stream(client)) == "Hi there"
    events = await stream(client)
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:3]] == ["a", "bc"]
    assert content_of(events) == "abc"


async def test_finish_reason(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(finish_reason="length"))
    events = await stream(client)
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


async def test_server_reply_is_used_by_default(aiohttp_client: Any) -> None:
    custom = DemoUpstream(pace=0, reply="Custom reply.")
    assert content_of(await stream(await aiohttp_client(custom.app))) == "Custom reply."


@pytest.mark.parametrize(("framing", "eol"), [("lf", b"\n"), ("crlf", b"\r\n"), ("cr", b"\r")])
async def test_framing(client: Client, demo: DemoUpstream, framing: Any, eol: bytes) -> None:
    demo.push(Scenario(framing=framing, text="a b"))
    async with client.post(CHAT, json=BODY) as resp:
        raw = await resp.read()
    frames = raw.split(eol * 2)
    assert frames[-1] == b""
    assert len(frames) == 1 + 5  # role, "a", " b", finish, [DONE]
    assert frames[-2] == b"data: [DONE]"
    stripped = raw.replace(eol, b"")
    assert b"\r" not in stripped  # every line ending is `eol`
    assert b"\n" not in stripped


async def test_huge_line_is_exact_and_valid(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(huge_line_bytes=300_000, text="ok"))
    async with client.post(CHAT, json=BODY) as resp:
        raw = await resp.read()
    lines = raw.split(b"\n\n")
    assert len(lines[1]) == 300_000  # right after the role chunk
    huge = json.loads(lines[1][len(b"data: ") :])
    assert set(huge["choices"][0]["delta"]["content"]) == {"x"}
    assert content_of([line[6:].decode() for line in lines[2:-1]]).endswith("ok")


async def test_huge_line_too_small_to_hold_json_is_refused(
    client: Client, demo: DemoUpstream
) -> None:
    demo.push(Scenario(huge_line_bytes=10))
    async with client.post(CHAT, json=BODY) as resp:
        assert resp.status == 500


async def chunk_sizes(base_url: str, body: dict[str, Any]) -> tuple[list[int], bytes]:
    """POST over a raw socket; return the HTTP/1.1 chunk sizes (one per server write) and body."""
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = json.dumps(body).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + data)
    answer = await reader.readuntil(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in answer.lower()
    sizes, payload = [], b""
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        sizes.append(size)
        payload += (await reader.readexactly(size + 2))[:-2]
    writer.close()
    await writer.wait_closed()
    return sizes, payload


@pytest.mark.parametrize("write", ["event", "byte", "pairs"])
async def test_write_granularity(demo: DemoUpstream, aiohttp_server: Any, write: Any) -> None:
    server = await aiohttp_server(demo.app)
    demo.push(Scenario(text="Grüß 🚀 x"), Scenario(text="Grüß 🚀 x", write=write))
    base = str(server.make_url("/v1"))
    _, expected = await chunk_sizes(base, BODY)
    sizes, payload = await chunk_sizes(base, BODY)
    assert payload.replace(b"-demo2", b"-demo1") == expected  # same bytes, other id
    frames = [len(f) + 2 for f in expected.split(b"\n\n")[:-1]]
    if write == "event":
        assert sizes == frames
    elif write == "byte":
        assert sizes == [1] * len(expected)
    else:
        assert sizes == [a + b for a, b in zip(frames[::2], frames[1::2], strict=False)] + (
            [frames[-1]] if len(frames) % 2 else []
        )


# --- scenarios: how a stream ends ---------------------------------------------------------------


async def test_after_with_eof_ends_cleanly_without_finish(
    client: Client, demo: DemoUpstream
) -> None:
    demo.push(Scenario(after=2, ending="eof"))
    events = await stream(client)
    assert len(events) == 3  # role + 2 content events
    assert content_of(events) == "".join(tokenize(DEMO_REPLY)[:2])
    seen = demo.seen[0]
    assert seen.finished.is_set()
    assert not seen.closed.is_set()


async def test_error_ending_sends_one_inband_error(client: Client, demo: DemoUpstream) -> None:
    custom = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "x"}}
    demo.push(Scenario(after=1, ending="error"), Scenario(after=0, ending="error", error=custom))
    events = await stream(client)
    assert len(events) == 3
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    assert set(json.loads(events[-1])["error"]) == {"message", "type", "param", "code"}
    assert json.loads((await stream(client))[-1]) == custom


async def test_reset_breaks_the_clients_read(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(after=2, ending="reset"))
    async with client.post(CHAT, json=BODY) as resp:
        events = Events(resp)
        got = [await events.next() for _ in range(3)]
        with pytest.raises(aiohttp.ClientPayloadError, match="ConnectionResetError"):
            await resp.content.read()  # an RST, not a FIN
    assert content_of([g for g in got if g]) == "".join(tokenize(DEMO_REPLY)[:2])
    seen = demo.seen[0]
    async with asyncio.timeout(GUARD):
        await seen.finished.wait()
    assert not seen.closed.is_set()  # our own reset is not the client leaving


async def test_stall_then_client_close_sets_closed(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(after=2, ending="stall"))
    async with client.post(CHAT, json=BODY) as resp:
        events = Events(resp)
        assert [await events.next() is not None for _ in range(3)] == [True] * 3
        seen = await demo.next_request()
        assert seen.events_sent == 3
        assert not seen.finished.is_set()  # stalled, not ended
        resp.close()
    async with asyncio.timeout(GUARD):
        await seen.closed.wait()
        await seen.finished.wait()
    assert seen.events_sent == 3


async def test_hang_before_headers_then_client_close_sets_closed(
    client: Client, demo: DemoUpstream
) -> None:
    demo.push(Scenario(hang_before_headers=True))
    request = asyncio.ensure_future(client.post(CHAT, json=BODY))
    seen = await demo.next_request()
    assert not request.done()
    request.cancel()
    async with asyncio.timeout(GUARD):
        await seen.closed.wait()
        await seen.finished.wait()
    assert seen.events_sent == 0


async def test_silence_sends_headers_first_and_notices_client_close(
    client: Client, demo: DemoUpstream
) -> None:
    demo.push(Scenario(silence_before_first=3600))
    async with client.post(CHAT, json=BODY) as resp:  # headers arrived, no event yet
        assert resp.status == 200
        seen = await demo.next_request()
        assert seen.events_sent == 0
        resp.close()
    async with asyncio.timeout(GUARD):
        await seen.closed.wait()
    assert seen.events_sent == 0


async def test_pace_sleeps_before_each_content_event(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(pace=3600))
    async with client.post(CHAT, json=BODY) as resp:
        assert (
            json.loads(await Events(resp).next() or "")["choices"][0]["delta"]["role"]
            == "assistant"
        )
        seen = await demo.next_request()
        assert seen.events_sent == 1  # the first token is an hour away
        resp.close()
    async with asyncio.timeout(GUARD):
        await seen.closed.wait()


async def test_gate_holds_the_stream_until_set(client: Client, demo: DemoUpstream) -> None:
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=1))
    async with client.post(CHAT, json=BODY) as resp:
        events = Events(resp)
        await events.next()
        first = await events.next()
        seen = await demo.next_request()
        assert content_of([first or ""]) == tokenize(DEMO_REPLY)[0]
        assert seen.events_sent == 2  # event 2 does not exist yet
        gate.set()
        rest = await events.rest()
    assert content_of(rest) == "".join(tokenize(DEMO_REPLY)[1:])
    assert rest[-1] == "[DONE]"


async def test_gate_flushes_a_pending_pair_first(client: Client, demo: DemoUpstream) -> None:
    gate = asyncio.Event()
    demo.push(Scenario(gate=gate, gate_after=2, write="pairs"))
    async with client.post(CHAT, json=BODY) as resp:
        events = Events(resp)
        got = [await events.next() for _ in range(3)]  # role+token1 as a pair, token2 alone
        assert content_of([g or "" for g in got]) == "".join(tokenize(DEMO_REPLY)[:2])
        gate.set()
        await events.rest()


# --- running it outside pytest -----------------------------------------------------------------


async def test_start_demo_upstream_serves_and_notices_close() -> None:
    demo, runner, base = await start_demo_upstream(pace=0)
    try:
        assert base.startswith("http://127.0.0.1:")
        assert base.endswith("/v1")
        demo.push(Scenario(ending="stall", after=0))
        async with aiohttp.ClientSession() as session:
            async with session.post(base + "/chat/completions", json=BODY) as resp:
                assert resp.status == 200
                seen = await demo.next_request()
            async with asyncio.timeout(GUARD):
                await seen.closed.wait()
    finally:
        await runner.cleanup()


async def test_shutdown_does_not_wait_for_a_stalled_stream() -> None:
    demo, runner, base = await start_demo_upstream(pace=0)
    demo.push(Scenario(ending="stall"))
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/chat/completions", json=BODY) as resp,
    ):
        seen = await demo.next_request()
        async with asyncio.timeout(GUARD):
            await runner.cleanup()
        assert seen.finished.is_set()
        assert not seen.closed.is_set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_command_line_serves_the_demo() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-m", "dev.demo_upstream", "--port", "0", "--pace", "0",
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(GUARD * 2):
            line = b""
            while b"Running on" not in line:
                line = await proc.stdout.readline()
                assert line, "server exited"
        url = line.decode().split("Running on ")[1].split()[0]
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json=BODY) as resp,
        ):
            assert content_of(await Events(resp).rest()) == DEMO_REPLY
    finally:
        proc.terminate()
        await proc.wait()


# --- fault-suite additions (issue 5) -------------------------------------------------------------


async def test_reset_before_headers_answers_nothing(client: Client, demo: DemoUpstream) -> None:
    demo.push(Scenario(reset_before_headers=True))
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post(CHAT, json=BODY)
    assert len(demo.seen) == 1


async def test_keyed_scenarios_go_to_their_prompt_only(client: Client, demo: DemoUpstream) -> None:
    demo.push_for("mine", Scenario(status=503), Scenario(text="second"))
    demo.push(Scenario(text="shared"))

    def body(text: str) -> dict[str, Any]:
        return {**BODY, "messages": [{"role": "user", "content": text}]}

    async with client.post(CHAT, json=body("mine")) as resp:
        assert resp.status == 503
    async with client.post(CHAT, json=body("other")) as resp:
        assert content_of(await Events(resp).rest()) == "shared"
    async with client.post(CHAT, json=body("mine")) as resp:
        assert content_of(await Events(resp).rest()) == "second"
    demo.forget()
    assert demo.seen == []


async def test_refusing_base_url_refuses() -> None:
    async with aiohttp.ClientSession() as http:
        with refusing_base_url() as url, pytest.raises(aiohttp.ClientConnectorError):
            await http.post(url + "/chat/completions", json=BODY)
