"""CORS: an exact allowlist, headers on every response (streams and errors), none for others."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from dev.demo_upstream import DemoUpstream, Scenario
from lib.config import SettingsError, load_settings
from tests.conftest import Function
from tests.streams import post

APP = "https://app.example.com"
OTHER = "http://127.0.0.1:5173"
MakeFunction = Callable[..., Awaitable[Function]]


@pytest.fixture
async def cors_function(make_function: MakeFunction) -> Function:
    return await make_function(ALLOWED_ORIGINS=f"{APP}, {OTHER}", CORS_MAX_AGE="300")


def cors_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("access-control")}


async def preflight(http: aiohttp.ClientSession, url: str, origin: str) -> aiohttp.ClientResponse:
    resp = await http.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,user-agent",  # as the AI SDK asks
        },
    )
    await resp.read()
    return resp


async def test_preflight_from_an_allowed_origin(
    cors_function: Function, http: aiohttp.ClientSession
) -> None:
    resp = await preflight(http, cors_function.url, OTHER)
    assert resp.status == 204
    assert cors_headers(resp) == {
        "access-control-allow-origin": OTHER,
        "access-control-allow-methods": "GET, POST, OPTIONS",
        "access-control-allow-headers": "accept, authorization, content-type, user-agent",
        "access-control-max-age": "300",
    }
    assert resp.headers["vary"] == "Origin"
    assert resp.headers["x-request-id"]


async def test_preflight_from_another_origin_gets_no_cors_headers(
    cors_function: Function, http: aiohttp.ClientSession
) -> None:
    resp = await preflight(http, cors_function.url, "https://evil.example.com")
    assert resp.status == 204
    assert cors_headers(resp) == {}
    assert resp.headers["vary"] == "Origin"


async def test_stream_carries_cors_headers(
    cors_function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(text="hi"))
    resp = await post(http, cors_function.url, {"prompt": "x"}, headers={"Origin": APP})
    assert resp.status == 200
    assert cors_headers(resp) == {
        "access-control-allow-origin": APP,
        "access-control-expose-headers": (
            "x-request-id, retry-after, ratelimit, ratelimit-policy, ratelimit-limit, "
            "ratelimit-remaining, ratelimit-reset"
        ),
    }
    assert resp.headers["vary"] == "Origin"
    assert resp.headers["content-type"].startswith("text/event-stream")
    await resp.read()


@pytest.mark.parametrize(
    ("body", "status"),
    [({"prompt": ""}, 400), ({"prompt": "x", "model": "nope"}, 400)],
)
async def test_errors_carry_cors_headers(
    cors_function: Function, http: aiohttp.ClientSession, body: object, status: int
) -> None:
    resp = await post(http, cors_function.url, body, headers={"Origin": APP})
    await resp.read()
    assert resp.status == status
    assert cors_headers(resp)["access-control-allow-origin"] == APP


async def test_upstream_errors_and_405_carry_cors_headers(
    cors_function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    demo.push(Scenario(status=429, headers={"Retry-After": "7"}))
    resp = await post(http, cors_function.url, {"prompt": "x"}, headers={"Origin": APP})
    await resp.read()
    assert resp.status == 429
    assert cors_headers(resp)["access-control-allow-origin"] == APP
    resp = await http.get(cors_function.url, headers={"Origin": APP})
    await resp.read()
    assert resp.status == 405
    assert cors_headers(resp)["access-control-allow-origin"] == APP


async def test_origin_not_on_the_list_gets_no_cors_headers(
    cors_function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    for origin in ("https://evil.example.com", APP + ".evil.com", "null", APP.upper()):
        resp = await post(http, cors_function.url, {"prompt": "x"}, headers={"Origin": origin})
        await resp.read()
        assert cors_headers(resp) == {}, origin


async def test_default_is_same_origin_only(
    function: Function, demo: DemoUpstream, http: aiohttp.ClientSession
) -> None:
    resp = await post(http, function.url, {"prompt": "x"}, headers={"Origin": APP})
    await resp.read()
    assert cors_headers(resp) == {}
    assert "vary" not in resp.headers
    resp = await preflight(http, function.url, APP)
    assert resp.status == 204
    assert cors_headers(resp) == {}


@pytest.mark.parametrize(
    "value",
    ["*", "https://app.example.com/", "app.example.com", "https://*.example.com", "ftp://x.com"],
)
def test_allowed_origins_must_be_exact_origins(value: str) -> None:
    with pytest.raises(SettingsError, match="ALLOWED_ORIGINS"):
        load_settings({"ALLOWED_ORIGINS": value})


def test_allowed_origins_are_parsed() -> None:
    settings = load_settings({"ALLOWED_ORIGINS": " https://A.example.com ,http://[::1]:8080"})
    assert settings.cors.allowed_origins == {"https://a.example.com", "http://[::1]:8080"}
    assert settings.cors.max_age == 600
    assert settings.output.default_format == "openai"
    with pytest.raises(SettingsError, match="DEFAULT_FORMAT"):
        load_settings({"DEFAULT_FORMAT": "xml"})
