"""Caller authentication: static tokens, signed tokens (expiry, origin, client id), the mint
helper, and the 401 the function answers with. The clock is injected: nothing sleeps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from lib.auth import Authenticator, mint_token
from lib.config import PROJECT_ROOT, SettingsError, load_settings
from lib.errors import AuthenticationError
from tests.conftest import Function
from tests.streams import post

MakeFunction = Callable[..., Awaitable[Function]]
SECRET = "s" * 40
STATIC = "static-token-0123456789"
NOW = 1_800_000_000.0


def at(t: float) -> Callable[[], float]:
    return lambda: t


async def test_a_static_token_is_accepted_and_names_its_own_client() -> None:
    auth = Authenticator([STATIC, "another-token-abcdef"], None)
    caller = await auth.authenticate(f"Bearer {STATIC}", None)
    other = await auth.authenticate("bearer another-token-abcdef", None)
    assert caller.client_id is not None
    assert caller.client_id.startswith("token:")
    assert STATIC not in caller.client_id
    assert caller.client_id != other.client_id


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        f"Bearer {STATIC}x",
        f"Token {STATIC}",
        "Bearer v1.a.b",
    ],
)
async def test_anything_but_a_known_token_is_401_with_a_bearer_challenge(
    authorization: str | None,
) -> None:
    auth = Authenticator([STATIC], SECRET)
    with pytest.raises(AuthenticationError) as caught:
        await auth.authenticate(authorization, None)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="generate"')


async def test_a_signed_token_is_valid_until_it_expires() -> None:
    token = mint_token(SECRET, ttl=600, client_id="user-42", clock=at(NOW))
    caller = await Authenticator([], SECRET, clock=at(NOW + 599)).authenticate(
        f"Bearer {token}", None
    )
    assert caller.client_id == "user:user-42"
    with pytest.raises(AuthenticationError, match="expired"):
        await Authenticator([], SECRET, clock=at(NOW + 600)).authenticate(f"Bearer {token}", None)


async def test_a_signed_token_valid_for_longer_than_the_maximum_lifetime_is_refused() -> None:
    auth = Authenticator([], SECRET, max_lifetime=3600, clock=at(NOW))
    ok = mint_token(SECRET, ttl=3600, client_id="a", clock=at(NOW))
    assert (await auth.authenticate(f"Bearer {ok}", None)).client_id == "user:a"
    forever = mint_token(SECRET, ttl=3601, client_id="a", clock=at(NOW))
    with pytest.raises(AuthenticationError, match="AUTH_MAX_TOKEN_LIFETIME"):
        await auth.authenticate(f"Bearer {forever}", None)
    # The default: a day. A token minted for ten years is refused out of the box.
    decade = mint_token(SECRET, ttl=10 * 365 * 86_400, clock=at(NOW))
    with pytest.raises(AuthenticationError, match="86400 s"):
        await Authenticator([], SECRET, clock=at(NOW)).authenticate(f"Bearer {decade}", None)
    assert (
        load_settings({"AUTH_MAX_TOKEN_LIFETIME": "600"}).protection.auth_max_token_lifetime == 600
    )
    with pytest.raises(SettingsError, match="AUTH_MAX_TOKEN_LIFETIME"):
        load_settings({"AUTH_MAX_TOKEN_LIFETIME": "0"})


async def test_a_signed_token_bound_to_an_origin_works_only_from_that_origin() -> None:
    token = mint_token(SECRET, origin="https://site.example/", clock=at(NOW))
    auth = Authenticator([], SECRET, clock=at(NOW))
    assert (await auth.authenticate(f"Bearer {token}", "https://site.example")).client_id is None
    for origin in (None, "https://evil.example", "http://site.example"):
        with pytest.raises(AuthenticationError, match="origin"):
            await auth.authenticate(f"Bearer {token}", origin)


async def test_a_token_signed_with_another_secret_or_altered_is_rejected() -> None:
    auth = Authenticator([], SECRET, clock=at(NOW))
    forged = mint_token("x" * 40, ttl=600, clock=at(NOW))
    good = mint_token(SECRET, ttl=600, client_id="a", clock=at(NOW))
    version, _payload, signature = good.split(".")
    longer = mint_token(SECRET, ttl=10**6, client_id="a", clock=at(NOW)).split(".")[1]
    for token in (forged, f"{version}.{longer}.{signature}", good[:-2] + "AA"):
        with pytest.raises(AuthenticationError, match="not valid"):
            await auth.authenticate(f"Bearer {token}", None)


def test_settings_refuse_weak_secrets_without_echoing_them() -> None:
    with pytest.raises(SettingsError, match="AUTH_SIGNING_SECRET has 8 characters") as caught:
        load_settings({"AUTH_SIGNING_SECRET": "hunter22"})
    assert "hunter22" not in str(caught.value)
    with pytest.raises(SettingsError, match="AUTH_TOKENS"):
        load_settings({"AUTH_TOKENS": "short"})


def test_the_mint_helper_prints_a_token_the_function_accepts() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH_")}
    env["AUTH_SIGNING_SECRET"] = SECRET
    done = subprocess.run(
        [sys.executable, "-m", "lib.auth", "mint", "--ttl", "60", "--client", "user-7"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.strip()
    caller = asyncio.run(Authenticator([], SECRET).authenticate(f"Bearer {token}", None))
    assert caller.client_id == "user:user-7"


async def test_the_function_answers_401_before_reading_the_body_and_200_with_a_token(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(AUTH_TOKENS=STATIC, AUTH_SIGNING_SECRET=SECRET)
    resp = await post(http, function.url, {"prompt": "hi"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="generate"'
    assert (await resp.json())["error"]["type"] == "authentication_error"
    # Not even a malformed body is looked at before the token.
    resp = await post(http, function.url, data=b"{not json", headers={"Authorization": "Bearer x"})
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    resp = await post(
        http, function.url, {"prompt": "hi"}, headers={"Authorization": f"Bearer {STATIC}"}
    )
    assert resp.status == 200
    await resp.read()
    token = mint_token(SECRET, ttl=60, origin="https://site.example")
    headers = {"Authorization": f"Bearer {token}", "Origin": "https://site.example"}
    resp = await post(http, function.url, {"prompt": "hi"}, headers=headers)
    assert resp.status == 200
    await resp.read()


async def test_preflight_needs_no_token(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(AUTH_TOKENS=STATIC)
    async with http.options(function.url) as resp:
        assert resp.status == 204
