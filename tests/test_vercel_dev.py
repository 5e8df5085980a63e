"""``vercel dev`` (the real, pinned CLI) serving the project offline, as ``make vercel-dev`` does.

The CLI's start-up calls (the user, the team, the project, its environment variables) are
answered by the stand-in on loopback (tests/vercel_api.py), which hands the function the demo
upstream's URL and the canary key as pulled environment variables. The config is the one
``make vercel-dev`` derives from ``vercel.json`` (no ``maxDuration``: vercel/vercel#17620).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from dev.demo_upstream import DemoUpstream, Scenario
from dev.vercel_cli import (
    ROOT,
    cli_environ,
    clone_files,
    copy_files,
    dev_command,
    dev_config,
    link_project,
)
from tests.conftest import CANARY_KEY
from tests.streams import canonical_events, chat_text, completion_text
from tests.vercel_api import vercel_api

pytestmark = [pytest.mark.vercel, pytest.mark.timeout(300)]
on_module_loop = pytest.mark.asyncio(loop_scope="module")

JSON = {"Content-Type": "application/json"}
READY = re.compile(rb"Ready! Available at (http://\S+)")
# How long a held-back stream may show nothing before the record says "buffered". It decides only
# what the record says, never whether a test passes: "streamed" is seen, not inferred.
BUFFERED_AFTER = 5.0


def test_dev_config_is_vercel_json_without_the_keys_vercel_dev_rejects() -> None:
    config = json.loads((ROOT / "vercel.json").read_text())
    derived = dev_config(config)
    for name, settings in config["functions"].items():
        kept = {k: v for k, v in settings.items() if k not in ("maxDuration", "memory")}
        assert derived["functions"][name] == kept  # type: ignore[index]
    assert "maxDuration" in config["functions"]["api/generate.py"]  # the deployed file keeps it
    assert {k: v for k, v in derived.items() if k != "functions"} == {
        k: v for k, v in config.items() if k != "functions"
    }


@pytest.fixture(scope="module")
def upstream(served_upstream: tuple[DemoUpstream, str]) -> DemoUpstream:
    return served_upstream[0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vercel_dev(
    served_upstream: tuple[DemoUpstream, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The base URL of a running ``vercel dev``; the whole process group is ended after."""
    work = tmp_path_factory.mktemp("vercel-dev")
    tree = copy_files(ROOT, clone_files(), work / "tree")
    link_project(tree)
    env = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": served_upstream[1]}
    async with vercel_api(env) as api:
        args = ["--listen", "127.0.0.1:0", "--yes", "--api", api.url, "--token", "localtoken"]
        args += ["--global-config", str(work / "home")]
        proc = await asyncio.create_subprocess_exec(
            *dev_command(tree, args),
            cwd=tree,
            env=cli_environ(work / "bin"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        said = b""
        try:
            async with asyncio.timeout(120):
                while (ready := READY.search(said)) is None:
                    line = await proc.stdout.readline()
                    assert line, f"vercel dev exited: {said.decode(errors='replace')}"
                    said += line
            drain = asyncio.create_task(proc.stdout.read())
            yield ready[1].decode()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
            if "drain" in locals():
                drain.cancel()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session:
        yield session


async def fetch(http: aiohttp.ClientSession, url: str, body: object) -> tuple[int, str, bytes]:
    async with http.post(url, data=json.dumps(body), headers=JSON) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


@on_module_loop
async def test_prompt_gets_completion_chunks(
    vercel_dev: str, upstream: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    status, ctype, raw = await fetch(http, vercel_dev + "/api/generate", {"prompt": "Hi"})
    assert (status, ctype.split(";")[0]) == (200, "text/event-stream")
    events = canonical_events(raw)
    assert events[-1] == "[DONE]"
    assert completion_text(events) == upstream.reply
    assert upstream.seen[-1].headers["Authorization"] == f"Bearer {CANARY_KEY}"


@on_module_loop
@pytest.mark.parametrize("path", ["/api/generate", "/api/v1/chat/completions"])
async def test_messages_get_chat_chunks(
    vercel_dev: str, upstream: DemoUpstream, http: aiohttp.ClientSession, path: str
) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    status, _, raw = await fetch(http, vercel_dev + path, body)
    assert status == 200
    events = canonical_events(raw)
    assert events[-1] == "[DONE]"
    assert chat_text(events) == upstream.reply


@on_module_loop
async def test_ui_format_gets_the_ui_message_stream(
    vercel_dev: str, upstream: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"id": "c1", "messages": [{"id": "m1", "role": "user", "parts": [
        {"type": "text", "text": "Hi"}]}], "trigger": "submit-message"}  # fmt: skip
    status, _, raw = await fetch(http, vercel_dev + "/api/generate", body)
    assert status == 200
    events = canonical_events(raw)
    assert events[-1] == "[DONE]"
    parts = [json.loads(e) for e in events[:-1]]
    assert parts[0]["type"] == "start"
    assert parts[-1]["type"] == "finish"
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == upstream.reply


@on_module_loop
async def test_text_format_gets_the_plain_text(
    vercel_dev: str, upstream: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    url = vercel_dev + "/api/generate?format=text"
    status, ctype, raw = await fetch(http, url, {"prompt": "Hi"})
    assert (status, ctype.split(";")[0]) == (200, "text/plain")
    assert raw.decode() == upstream.reply


@on_module_loop
async def test_get_is_refused_with_405(vercel_dev: str, http: aiohttp.ClientSession) -> None:
    async with http.get(vercel_dev + "/api/generate") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["type"] == "method_not_allowed"


@on_module_loop
@pytest.mark.parametrize(("path", "source"), [("/", "index.html"), ("/stream.js", "stream.js")])
async def test_public_files_are_served(
    vercel_dev: str, http: aiohttp.ClientSession, path: str, source: str
) -> None:
    async with http.get(vercel_dev + path) as resp:
        assert resp.status == 200
        assert await resp.read() == (ROOT / "public" / source).read_bytes()


@on_module_loop
async def test_records_whether_vercel_dev_streams(
    vercel_dev: str,
    upstream: DemoUpstream,
    http: aiohttp.ClientSession,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    """The upstream holds everything after its first token until the first bytes of the body
    reach the client (or BUFFERED_AFTER passes). The reply must be complete either way."""
    gate = asyncio.Event()
    upstream.push(Scenario(text="Hello there, world", gate=gate, gate_after=1))
    streamed = False

    async def first_bytes(resp: aiohttp.ClientResponse) -> bytes:
        nonlocal streamed
        piece = await resp.content.readany()
        streamed = not gate.is_set()
        gate.set()
        return piece

    async def read() -> bytes:
        async with http.post(
            vercel_dev + "/api/generate?format=text", data=b'{"prompt": "Hi"}', headers=JSON
        ) as resp:
            assert resp.status == 200
            return await first_bytes(resp) + await resp.read()

    reading = asyncio.create_task(read())
    await asyncio.wait({reading}, timeout=BUFFERED_AFTER)
    gate.set()
    body = await reading
    assert body.decode() == "Hello there, world"
    delivery = "streamed" if streamed else "buffered (the whole response at once)"
    record_property("vercel_dev_delivery", delivery)
    with capsys.disabled():
        print(f"\n[vercel dev, CLI 64.0.2] the response arrived {delivery}")
