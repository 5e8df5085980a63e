"""The local server (`python -m dev.serve`): Vercel's routing rules as pure functions, then the real
command serving a small project of its own and the real function, checked with a real client."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from dev.demo_upstream import Scenario, start_demo_upstream
from dev.serve import (
    HeaderRule,
    Rewrite,
    compile_source,
    curl_line,
    discover_functions,
    load_config,
    parse_config,
    rfc3339_after,
    static_file,
)
from tests.conftest import CANARY_KEY
from tests.vercel_harness import PROJECT_ROOT, serve_process, sse_data

# Module-scoped servers and the demo upstream share one event loop with the tests that use them.
module_loop = pytest.mark.asyncio(loop_scope="module")

# --- pure routing rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        ("/about", "/about", {}),
        ("/about", "/about/", None),  # strict: the trailing slash matters
        ("/about", "/About", None),  # case-sensitive
        ("/p/:id", "/p/42", {"id": "42", "1": "42"}),
        ("/p/:id", "/p/42/x", None),
        ("/p/:id?", "/p", {"id": "", "1": ""}),
        ("/docs/:slug*", "/docs", {"slug": "", "1": ""}),
        ("/docs/:slug*", "/docs/a/b/c", {"slug": "a/b/c", "1": "a/b/c"}),
        ("/docs/:slug+", "/docs", None),
        ("/docs/:slug+", "/docs/a/b", {"slug": "a/b", "1": "a/b"}),
        ("/n/:num(\\d+)", "/n/12", {"num": "12", "1": "12"}),
        ("/n/:num(\\d+)", "/n/ab", None),
        ("/api/(.*)", "/api/generate", {"1": "generate"}),
        ("/(.*)", "/", {"1": ""}),
        ("/a.b", "/axb", None),  # literals are literal
    ],
)
def test_source_patterns_match_like_path_to_regexp(
    source: str, path: str, expected: dict[str, str] | None
) -> None:
    assert compile_source(source).match(path) == expected


@pytest.mark.parametrize("source", ["no-slash", "/:", "/(a", "/x/((a)b)"])
def test_bad_source_patterns_are_rejected(source: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - message varies by mistake
        compile_source(source)


def test_rewrite_puts_unused_parameters_in_the_query() -> None:
    rule = Rewrite(compile_source("/p/:id"), "/api/generate")
    assert rule.apply("/p/42") == ("/api/generate", [("id", "42")])
    assert rule.apply("/q/42") is None


def test_rewrite_substitutes_parameters_used_in_the_destination_path() -> None:
    rule = Rewrite(compile_source("/docs/:slug*"), "/pages/:slug*")
    assert rule.apply("/docs/a/b") == ("/pages/a/b", [])
    positional = Rewrite(compile_source("/old/(.*)"), "/new/$1")
    assert positional.apply("/old/x.css") == ("/new/x.css", [])


def test_rewrite_destination_query_takes_parameters_and_keeps_its_own_keys() -> None:
    rule = Rewrite(compile_source("/items/:id"), "/api/probe?item=:id&id=fixed")
    assert rule.apply("/items/7") == ("/api/probe", [("item", "7"), ("id", "fixed")])


def test_header_rules_match_and_fill_parameters() -> None:
    rule = HeaderRule(compile_source("/p/:id"), (("X-Item", "item-:id"), ("X-Time", "12:00")))
    assert rule.apply("/p/9") == [("X-Item", "item-9"), ("X-Time", "12:00")]
    assert rule.apply("/elsewhere") == []


def test_functions_are_discovered_like_vercel(tmp_path: Path) -> None:
    for name in ["a.py", "_private.py", "nested/b.py", "_hidden/c.py", "index.py", "x.txt"]:
        (tmp_path / "api" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "api" / name).write_text("")
    assert discover_functions(tmp_path) == {
        "/api/a": "api/a.py",
        "/api/index": "api/index.py",
        "/api": "api/index.py",
        "/api/nested/b": "api/nested/b.py",
    }


def test_static_files_resolve_inside_public_only(tmp_path: Path) -> None:
    public = tmp_path / "public"
    (public / "docs").mkdir(parents=True)
    (public / "index.html").write_text("home")
    (public / "docs" / "index.html").write_text("docs")
    (tmp_path / "secret.txt").write_text("no")
    assert static_file(public, "/") == public / "index.html"
    assert static_file(public, "/docs/") == public / "docs" / "index.html"
    assert static_file(public, "/docs") == public / "docs" / "index.html"
    assert static_file(public, "/../secret.txt") is None
    assert static_file(public, "/missing.css") is None


def test_max_duration_comes_from_exact_then_glob_keys() -> None:
    config = parse_config(
        {"functions": {"api/a.py": {"maxDuration": 5}, "api/*.py": {"maxDuration": 9}}}
    )
    assert config.max_duration("api/a.py") == 5
    assert config.max_duration("api/b.py") == 9
    assert parse_config({}).max_duration("api/a.py") is None


def test_the_projects_own_vercel_json_is_understood() -> None:
    config = load_config(PROJECT_ROOT / "vercel.json")
    raw = json.loads((PROJECT_ROOT / "vercel.json").read_text())
    assert (
        config.max_duration("api/generate.py") == raw["functions"]["api/generate.py"]["maxDuration"]
    )
    assert discover_functions(PROJECT_ROOT)["/api/generate"] == "api/generate.py"


def test_deadline_header_value_is_rfc3339_utc_milliseconds() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert rfc3339_after(60, now) == "2025-01-02T03:05:05.678Z"


# --- a project of its own, served by the real command ----------------------------------------

PROBE = """
    import json
    from vercel_runtime.deadline import get_deadline

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        deadline = get_deadline()
        seen = {
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "deadline": deadline.timestamp() if deadline else None,
        }
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""

# Ignore their deadline: the platform must cut them at maxDuration.
STALL = """
    import asyncio

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.Event().wait()
"""

STUBBORN = """
    import asyncio

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started\\n", "more_body": True})
        await asyncio.Event().wait()
"""

VERCEL_JSON = {
    "functions": {"api/probe.py": {"maxDuration": 7}, "api/s*.py": {"maxDuration": 1}},
    "rewrites": [
        {"source": "/p/:id", "destination": "/api/probe"},
        {"source": "/items/:id", "destination": "/api/probe?item=:id"},
        {"source": "/old/:file*", "destination": "/css/:file*"},
        {"source": "/ext/(.*)", "destination": "https://example.com/$1"},
        {"source": "/api/probe", "destination": "/never-used"},
    ],
    "headers": [
        {"source": "/api/(.*)", "headers": [{"key": "X-Api", "value": "yes"}]},
        {"source": "/p/:id", "headers": [{"key": "X-Item", "value": "item-:id"}]},
        {"source": "/(.*)", "headers": [{"key": "X-Frame-Options", "value": "DENY"}]},
    ],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    files = {
        "api/probe.py": PROBE,
        "api/stall.py": STALL,
        "api/stubborn.py": STUBBORN,
        "api/_helper.py": "raise SystemExit('a _file must never be imported')",
        "public/index.html": "<!doctype html><title>home</title>",
        "public/css/site.css": "body { color: red }",
        "vercel.json": json.dumps(VERCEL_JSON),
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def small(project: Path) -> Iterator[tuple[str, list[str]]]:
    with serve_process(["--root", str(project)], {"OPENAI_API_KEY": CANARY_KEY}) as (url, out, _):
        yield url, out


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def probe(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[Any, Any]:
    async with http.get(url, **kwargs) as resp:
        assert resp.status == 200
        return await resp.json(), resp.headers


@module_loop
async def test_functions_map_to_api_routes_and_underscore_files_do_not(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    url, out = small
    seen, _ = await probe(http, url + "/api/probe")
    assert seen["path"] == "/api/probe"
    async with http.get(url + "/api/_helper") as resp:
        assert resp.status == 404
    assert "  /api/probe -> api/probe.py (maxDuration 7s)" in out
    assert "  /api/stubborn -> api/stubborn.py (maxDuration 1s)" in out


@module_loop
async def test_max_duration_becomes_the_runtime_deadline_and_clients_cannot_set_it(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    before = time.time()
    seen, _ = await probe(
        http, small[0] + "/api/probe", headers={"x-vercel-internal-deadline": rfc3339_after(999)}
    )
    after = time.time()
    assert before + 7 - 0.01 <= seen["deadline"] <= after + 7 + 0.01
    assert not any(h.startswith("x-vercel-internal-") for h in seen["headers"])


@module_loop
async def test_a_caller_cannot_choose_its_address_with_x_forwarded_for(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; the local server does not, so
    a caller behind any same-host tunnel cannot rotate the header to escape RATE_LIMIT."""
    for spoofed in ("6.6.6.6", "7.7.7.7"):
        seen, _ = await probe(http, small[0] + "/api/probe", headers={"X-Forwarded-For": spoofed})
        assert seen["headers"]["x-vercel-forwarded-for"] == "127.0.0.1"
        assert seen["headers"]["x-real-ip"] == "127.0.0.1"
        assert seen["headers"]["x-forwarded-for"] == f"{spoofed}, 127.0.0.1"


@module_loop
async def test_a_proxy_the_operator_names_is_trusted_and_slow_headers_are_cut(
    project: Path, http: aiohttp.ClientSession
) -> None:
    args = ["--root", str(project), "--forwarded-allow-ips", "127.0.0.1", "--header-timeout", "0.2"]
    with serve_process(args, {"OPENAI_API_KEY": CANARY_KEY}) as (url, _, _):
        seen, _ = await probe(http, url + "/api/probe", headers={"X-Forwarded-For": "6.6.6.6"})
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/probe HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    assert seen["headers"]["x-vercel-forwarded-for"] == "6.6.6.6"


@module_loop
async def test_a_function_silent_at_max_duration_gets_504(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with http.get(small[0] + "/api/stall") as resp:
        assert resp.status == 504
        assert await resp.text() == "504: FUNCTION_INVOCATION_TIMEOUT\n"
    assert 1 <= time.monotonic() - started < 5


@module_loop
async def test_a_streaming_function_is_cut_at_max_duration_without_a_clean_end(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with http.get(small[0] + "/api/stubborn") as resp:
        assert resp.status == 200
        assert await resp.content.readline() == b"started\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read()
    assert 1 <= time.monotonic() - started < 5


@module_loop
async def test_rewrites_reach_the_function_with_the_requested_path_and_merged_query(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    seen, headers = await probe(http, small[0] + "/p/42?x=1")
    assert (seen["path"], seen["query"]) == ("/p/42", "x=1&id=42")
    assert headers["X-Item"] == "item-42"
    assert "X-Api" not in headers  # header rules match the requested path, not the destination
    seen, _ = await probe(http, small[0] + "/items/7")
    assert seen["query"] == "item=7&id=7"


@module_loop
async def test_the_filesystem_wins_over_rewrites(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    seen, headers = await probe(http, small[0] + "/api/probe")
    assert seen["path"] == "/api/probe"
    assert headers["X-Api"] == "yes"
    assert headers["X-Frame-Options"] == "DENY"


@module_loop
async def test_static_files_from_public_with_index_and_rewrites(
    small: tuple[str, list[str]], http: aiohttp.ClientSession
) -> None:
    url = small[0]
    async with http.get(url + "/") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert await resp.text() == "<!doctype html><title>home</title>"
    for path in ("/css/site.css", "/old/site.css"):
        async with http.get(url + path) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/css; charset=utf-8"
            assert await resp.text() == "body { color: red }"
    async with http.post(url + "/css/site.css") as resp:
        assert resp.status == 405
    async with http.get(url + "/nothing-here") as resp:
        assert resp.status == 404
        assert resp.headers["X-Frame-Options"] == "DENY"
    async with http.get(url + "/ext/anything") as resp:
        assert resp.status == 502


# --- the real function through the real command ----------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[tuple[Any, str]]:
    demo, runner, base_url = await start_demo_upstream(pace=0)
    yield demo, base_url
    await runner.cleanup()


@pytest.fixture(scope="module")
def served(
    upstream: tuple[Any, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str]]]:
    """The project as it is, with `--local-config` giving the function a 3 s maxDuration."""
    config = tmp_path_factory.mktemp("config") / "vercel.json"
    config.write_text(json.dumps({"functions": {"api/generate.py": {"maxDuration": 3}}}))
    env = {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_BASE_URL": upstream[1], "DEADLINE_MARGIN": "1"}
    with serve_process(["--local-config", str(config)], env) as (url, out, _):
        yield url, out


def text_of(data: str) -> str:
    return "".join(c.get("text") or "" for c in json.loads(data).get("choices", []))


@module_loop
async def test_the_function_streams_through_the_local_server(
    served: tuple[str, list[str]], upstream: tuple[Any, str], http: aiohttp.ClientSession
) -> None:
    url, out = served
    assert "DEMO MODE" not in "\n".join(out)
    gate = asyncio.Event()
    upstream[0].push(Scenario(text="Hello there, world", gate=gate, gate_after=1))
    body = json.dumps({"prompt": "Say hello"})
    headers = {"Content-Type": "application/json"}
    async with http.post(url + "/api/generate", data=body, headers=headers) as resp:
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        events = sse_data(resp.content)
        first = ""
        while not first:
            first = text_of(await anext(events))
        assert first == "Hello"  # arrived while the upstream holds back the rest
        gate.set()
        rest = [data async for data in events]
    assert rest[-1] == "[DONE]"
    assert first + "".join(text_of(d) for d in rest[:-1]) == "Hello there, world"


@module_loop
async def test_max_duration_from_vercel_json_ends_the_stream_in_band(
    served: tuple[str, list[str]], upstream: tuple[Any, str], http: aiohttp.ClientSession
) -> None:
    demo = upstream[0]
    demo.push(Scenario(text="one two three", gate=asyncio.Event(), gate_after=1))  # never opens
    before = len(demo.seen)
    body = json.dumps({"prompt": "Say hello"})
    started = time.monotonic()
    async with http.post(
        served[0] + "/api/generate", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        events = [data async for data in sse_data(resp.content)]
    elapsed = time.monotonic() - started
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "deadline_exceeded"
    assert 1.5 < elapsed < 3  # maxDuration 3 minus DEADLINE_MARGIN 1, before the platform's cut
    await asyncio.wait_for(demo.seen[before].closed.wait(), 5)


@module_loop
async def test_without_a_key_the_server_runs_in_loud_demo_mode(http: aiohttp.ClientSession) -> None:
    with serve_process() as (url, out, _):
        printed = "\n".join(out)
        assert "DEMO MODE" in printed
        assert "  " + curl_line(url) in out
        assert f"curl -N {url}/api/generate -H 'Content-Type: application/json'" in printed
        body = json.dumps({"prompt": "Say hello"})
        headers = {"Content-Type": "application/json"}
        async with http.post(url + "/api/generate", data=body, headers=headers) as resp:
            events = [data async for data in sse_data(resp.content)]
    assert events[-1] == "[DONE]"
    assert "demo upstream" in "".join(text_of(e) for e in events[:-1])
