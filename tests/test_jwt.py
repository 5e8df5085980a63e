"""Standard JWTs with real parts: keys generated here, the provider's JWKS served by a real aiohttp
server on loopback and fetched through the function's own session, tokens minted by PyJWT and by
`jose` under node (the Next.js side). Wall and cache clocks are injected: nothing sleeps.

Every refused token is checked end to end with the body never sent: the function must answer 401
from the headers alone (it would hang waiting for the body otherwise, and the read times out).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from lib.auth import mint_jwt
from lib.config import PROJECT_ROOT, SettingsError, load_settings
from lib.errors import UpstreamError
from lib.handler import GenerateHandler
from lib.jwtauth import MAX_JWKS_BYTES, JWTVerifier, TokenRefused, parse_jwks
from lib.upstream import UpstreamClient
from tests.conftest import Function, LogTap
from tests.jsdriver import NodeDriver
from tests.streams import post

MakeFunction = Callable[..., Awaitable[Function]]
SECRET = "j" * 48
ISSUER = "https://auth.example.test/"
AUDIENCE = "https://api.example.test"
NOW = 1_800_000_000


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Signer:
    """A provider's key pair: mints tokens with the private key, publishes the public JWK."""

    alg: str
    kid: str
    private: Any
    public_jwk: dict[str, Any] = field(init=False)
    private_jwk: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        algorithm: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[
            self.alg
        ]
        tags = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        self.public_jwk = {**algorithm.to_jwk(self.private.public_key(), as_dict=True), **tags}
        self.private_jwk = {**algorithm.to_jwk(self.private, as_dict=True), **tags}

    def mint(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header}
        )


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {
        "RS256": Signer("RS256", "rsa-1", rsa.generate_private_key(65537, 2048)),
        "ES256": Signer("ES256", "ec-1", ec.generate_private_key(ec.SECP256R1())),
        "EdDSA": Signer("EdDSA", "ed-1", ed25519.Ed25519PrivateKey.generate()),
    }


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "iat": NOW, "exp": NOW + 600, **extra}


class JWKSServer:
    """The provider's JWKS endpoint: counts its hits, can fail or stall on cue."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.status = 200
        self.stall: asyncio.Event | None = None
        self.app = web.Application()
        self.app.router.add_get("/.well-known/jwks.json", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.stall is not None:
            await self.stall.wait()
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks(
    aiohttp_server: Callable[..., Awaitable[TestServer]], signers: dict[str, Signer]
) -> AsyncIterator[tuple[JWKSServer, str]]:
    server = JWKSServer()
    server.keys = [s.public_jwk for s in signers.values()]
    running = await aiohttp_server(server.app)
    yield server, str(running.make_url("/.well-known/jwks.json"))
    if server.stall is not None:
        server.stall.set()


@dataclass
class JWTFunction:
    """A running function with JWT auth, and the two clocks its verifier reads."""

    function: Function
    wall: Clock
    cache: Clock

    @property
    def url(self) -> str:
        return self.function.url


@pytest.fixture
def make_jwt_function(
    make_function: MakeFunction, jwks: tuple[JWKSServer, str]
) -> Callable[..., Awaitable[JWTFunction]]:
    async def start(wall: float | None = NOW, **env: str) -> JWTFunction:
        settings = {
            "AUTH_JWKS_URL": jwks[1],
            "AUTH_JWT_ISSUER": ISSUER,
            "AUTH_JWT_AUDIENCE": AUDIENCE,
        }
        function = await make_function(**{**settings, **env})
        auth = function.handler.auth
        assert auth is not None
        assert auth.jwt is not None
        wall_clock, cache_clock = Clock(wall or time.time()), Clock(1000.0)
        if wall is not None:
            auth.jwt.clock = wall_clock
        if auth.jwt.keys is not None:
            auth.jwt.keys.clock = cache_clock
        return JWTFunction(function, wall_clock, cache_clock)

    return start


async def call(http: aiohttp.ClientSession, url: str, token: str, **headers: str) -> int:
    resp = await post(
        http, url, {"prompt": "hi"}, headers={"Authorization": f"Bearer {token}", **headers}
    )
    await resp.read()
    return resp.status


async def headers_only(url: str, token: str, origin: str | None = None) -> tuple[int, Any]:
    """POST a request head that promises a body and never send it; the status and JSON error."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        "Content-Length: 1000",
        f"Authorization: Bearer {token}",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        async with asyncio.timeout(5):
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    return status, body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_by_hand(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """HS256 signed with any bytes (PyJWT refuses to sign with a public key, as it should)."""
    signed = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return signed + "." + b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())


# -- HS256 with the shared secret -------------------------------------------------------------


async def test_an_hs256_token_from_pyjwt_names_its_sub_as_the_client(
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    fn = await make_jwt_function(AUTH_JWT_SECRET=SECRET, RATE_LIMIT="100/minute")
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert await call(http, fn.url, token) == 200
    line = json.loads((await logs.requests(1))[-1])
    assert line["client"] == "user:user-42"


@pytest.mark.node
async def test_a_token_minted_by_jose_as_in_the_nextjs_route_is_accepted(
    node: NodeDriver, make_function: MakeFunction, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    function = await make_function(AUTH_JWT_SECRET=SECRET)
    minted = await node.call(
        "mint",
        alg="HS256",
        secret=SECRET,
        subject="user_2abc",
        claims={"origin": "https://site.example"},
    )
    token = minted["token"]
    assert await call(http, function.url, token, Origin="https://site.example") == 200
    assert json.loads((await logs.requests(1))[-1])["client"] == "user:user_2abc"
    assert await call(http, function.url, token, Origin="https://evil.example") == 401
    # The browser side: the AI SDK's useCompletion sends it as a header (node's fetch sends
    # the Origin a browser would add itself).
    out = await node.call(
        "completion",
        api=function.url + "?format=ui",
        prompt="Hi",
        streamProtocol="data",
        headers={"Authorization": f"Bearer {token}", "Origin": "https://site.example"},
    )
    assert out["status"] == 200
    assert out["error"] is None
    assert out["result"]


async def test_issuer_and_audience_when_set_are_required_for_hs256_too(
    make_function: MakeFunction, http: aiohttp.ClientSession
) -> None:
    function = await make_function(
        AUTH_JWT_SECRET=SECRET, AUTH_JWT_ISSUER=ISSUER, AUTH_JWT_AUDIENCE=AUDIENCE
    )
    auth = function.handler.auth
    assert auth is not None
    assert auth.jwt is not None
    auth.jwt.clock = Clock(NOW)
    assert await call(http, function.url, jwt.encode(claims(), SECRET)) == 200
    no_iss = {k: v for k, v in claims().items() if k != "iss"}
    status, body = await headers_only(function.url, jwt.encode(no_iss, SECRET))
    assert (status, body["error"]["message"]) == (401, "The token has no iss claim.")
    status, body = await headers_only(function.url, jwt.encode(claims(aud="other"), SECRET))
    assert status == 401
    assert "aud" in body["error"]["message"]


# -- provider tokens through the JWKS ---------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_provider_tokens_are_checked_against_the_jwks_fetched_once(
    alg: str,
    signers: dict[str, Signer],
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    fn = await make_jwt_function()
    for n in range(5):
        assert await call(http, fn.url, signers[alg].mint(claims(sub=f"u{n}"))) == 200
    assert jwks[0].hits == 1  # never a network call per request


@pytest.mark.node
async def test_provider_tokens_minted_by_jose_are_accepted(
    node: NodeDriver,
    signers: dict[str, Signer],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    fn = await make_jwt_function(wall=None)  # jose stamps iat from the real clock
    for signer in signers.values():
        minted = await node.call(
            "mint",
            alg=signer.alg,
            jwk=signer.private_jwk,
            kid=signer.kid,
            subject="auth0|abc",
            claims={"iss": ISSUER, "aud": AUDIENCE},
        )
        assert await call(http, fn.url, minted["token"]) == 200, signer.alg


async def test_a_rotated_key_is_found_by_one_refetch_at_most_once_a_minute(
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    server, _ = jwks
    fn = await make_jwt_function()
    old = Signer("ES256", "ec-old", ec.generate_private_key(ec.SECP256R1()))
    new = Signer("ES256", "ec-new", ec.generate_private_key(ec.SECP256R1()))
    server.keys = [old.public_jwk]
    assert await call(http, fn.url, old.mint(claims())) == 200
    assert server.hits == 1
    server.keys = [old.public_jwk, new.public_jwk]  # the provider rotates
    fn.cache.t += 30  # within the minute: the new kid is not looked for yet
    assert await call(http, fn.url, new.mint(claims())) == 401
    assert server.hits == 1
    fn.cache.t += 31
    assert await call(http, fn.url, new.mint(claims())) == 200
    assert server.hits == 2
    assert await call(http, fn.url, old.mint(claims())) == 200
    assert server.hits == 2


async def test_a_flood_of_unknown_kids_costs_one_fetch_a_minute(
    signers: dict[str, Signer],
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    server, _ = jwks
    fn = await make_jwt_function()
    signer = signers["RS256"]
    assert await call(http, fn.url, signer.mint(claims())) == 200
    fn.cache.t += 61
    statuses = [
        await call(http, fn.url, signer.mint(claims(), kid=f"made-up-{n}")) for n in range(20)
    ]
    assert statuses == [401] * 20
    assert server.hits == 2
    status, body = await headers_only(fn.url, signer.mint(claims(), kid="made-up"))
    assert status == 401
    assert "does not publish" in body["error"]["message"]


async def test_the_cache_has_a_bounded_lifetime_and_a_removed_key_stops_working(
    signers: dict[str, Signer],
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    server, _ = jwks
    fn = await make_jwt_function(AUTH_JWKS_CACHE_SECONDS="300")
    token = signers["EdDSA"].mint(claims())
    assert await call(http, fn.url, token) == 200
    server.keys = [signers["RS256"].public_jwk]  # the provider revoked the EdDSA key
    fn.cache.t += 299
    assert await call(http, fn.url, token) == 200  # still cached
    assert server.hits == 1
    fn.cache.t += 1
    assert await call(http, fn.url, token) == 401
    assert server.hits == 2


async def test_a_provider_down_at_start_is_503_and_is_asked_again_after_a_minute(
    signers: dict[str, Signer],
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
    logs: LogTap,
) -> None:
    server, _ = jwks
    server.status = 503
    fn = await make_jwt_function()
    token = signers["RS256"].mint(claims())
    resp = await post(http, fn.url, {"prompt": "hi"}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "60"
    assert (await resp.json())["error"]["type"] == "auth_unavailable"
    fn.cache.t += 20
    for _ in range(5):
        assert await call(http, fn.url, token) == 503
    assert server.hits == 1  # no fetch per request while it is down
    assert sum("AUTH_JWKS_URL" in line for line in logs.lines) == 1
    server.status = 200
    fn.cache.t += 40
    assert await call(http, fn.url, token) == 200
    assert server.hits == 2


async def test_when_the_provider_goes_down_the_old_keys_serve_one_more_lifetime(
    signers: dict[str, Signer],
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    server, _ = jwks
    fn = await make_jwt_function(AUTH_JWKS_CACHE_SECONDS="600")
    token = signers["ES256"].mint(claims())
    assert await call(http, fn.url, token) == 200
    server.status = 500
    fn.cache.t += 600
    assert await call(http, fn.url, token) == 200  # refresh failed: stale keys still serve
    fn.cache.t += 30
    assert await call(http, fn.url, token) == 200
    assert server.hits == 2  # asked again at most once a minute
    fn.cache.t += 570  # two lifetimes without a successful fetch
    assert await call(http, fn.url, token) == 503
    assert server.hits == 3


async def test_a_provider_that_never_answers_costs_at_most_the_jwks_timeout(
    signers: dict[str, Signer],
    jwks: tuple[JWKSServer, str],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    server, _ = jwks
    server.stall = asyncio.Event()
    fn = await make_jwt_function(AUTH_JWKS_TIMEOUT="0.2")
    token = signers["RS256"].mint(claims())
    # Two requests at once share the one fetch, and both get the 503 when it times out.
    started = time.monotonic()
    statuses = await asyncio.gather(call(http, fn.url, token), call(http, fn.url, token))
    assert statuses == [503, 503]
    assert time.monotonic() - started < 3  # 0.2 s, with room for a slow machine; never 5 s
    assert server.hits == 1


async def test_the_jwks_fetch_is_bounded_follows_no_redirect_and_names_the_failure(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * (MAX_JWKS_BYTES + 1))

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/big")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/moved", moved)
    server = await aiohttp_server(app)
    client = UpstreamClient(load_settings({}).upstream)
    try:
        with pytest.raises(UpstreamError, match="more than"):
            await client.fetch(str(server.make_url("/big")), within=5, max_bytes=MAX_JWKS_BYTES)
        with pytest.raises(UpstreamError, match="answered 302"):
            await client.fetch(str(server.make_url("/moved")), within=5, max_bytes=MAX_JWKS_BYTES)
        body = await client.fetch(str(server.make_url("/big")), within=5, max_bytes=10**6)
        assert len(body) == MAX_JWKS_BYTES + 1
        port = server.port
        await server.close()
        with pytest.raises(UpstreamError, match="could not be fetched"):
            await client.fetch(f"http://127.0.0.1:{port}/big", within=5, max_bytes=10)
    finally:
        await client.close()


async def test_the_jwks_parser_keeps_only_asymmetric_signing_keys(
    signers: dict[str, Signer],
) -> None:
    good = signers["ES256"].public_jwk
    body = json.dumps(
        {
            "keys": [
                {"kty": "oct", "k": b64(b"x" * 32), "kid": "sym", "alg": "HS256"},
                {**signers["RS256"].public_jwk, "use": "enc", "kid": "enc"},
                {**signers["RS256"].public_jwk, "alg": "HS256", "kid": "confused"},
                {"kty": "RSA", "kid": "broken"},
                "not a key",
                good,
            ]
        }
    ).encode()
    assert list(parse_jwks(body)) == [good["kid"]]
    for bad in (b"[]", b"{}", b"not json", json.dumps({"keys": [{"kty": "oct"}]}).encode()):
        with pytest.raises(ValueError, match=r"JWKS|usable|Expecting"):
            parse_jwks(bad)


# -- every bad token is 401 from the headers alone --------------------------------------------


def bad_tokens(signers: dict[str, Signer]) -> dict[str, tuple[str, str]]:
    """Each refused token kind, with a word its 401 message must hold."""
    rs = signers["RS256"]
    good = rs.mint(claims())
    head, payload, signature = good.split(".")
    forged_payload = b64(json.dumps(claims(sub="admin")).encode())
    pem = rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confusion = {"alg": "HS256", "kid": rs.kid, "typ": "JWT"}
    none_head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return {
        "tampered": (f"{head}.{forged_payload}.{signature}", "not valid"),
        "other key": (
            Signer("RS256", rs.kid, rsa.generate_private_key(65537, 2048)).mint(claims()),
            "not valid",
        ),
        "expired": (rs.mint(claims(iat=NOW - 700, exp=NOW - 31)), "expired"),
        "not yet valid (nbf)": (rs.mint(claims(nbf=NOW + 31)), "not valid yet"),
        "issued in the future": (rs.mint(claims(iat=NOW + 31, exp=NOW + 600)), "not valid yet"),
        "wrong audience": (rs.mint(claims(aud="https://other.example")), "aud"),
        "no audience": (rs.mint({k: v for k, v in claims().items() if k != "aud"}), "aud"),
        "wrong issuer": (rs.mint(claims(iss="https://evil.example/")), "iss"),
        "no exp": (rs.mint({k: v for k, v in claims().items() if k != "exp"}), "exp"),
        "no sub": (rs.mint({k: v for k, v in claims().items() if k != "sub"}), "sub"),
        "too long-lived": (rs.mint(claims(exp=NOW + 86_401)), "AUTH_MAX_TOKEN_LIFETIME"),
        "alg none": (f"{none_head}.{payload}.", "algorithm"),
        "alg none, signature kept": (f"{none_head}.{payload}.{signature}", "algorithm"),
        "HS256 with the public key (PEM)": (hs256_by_hand(confusion, claims(), pem), "not valid"),
        "HS256 with the public JWK": (
            hs256_by_hand(confusion, claims(), json.dumps(rs.public_jwk).encode()),
            "not valid",
        ),
        "RS256 signature on the ES256 key's kid": (rs.mint(claims(), kid="ec-1"), "not valid"),
        "garbage": (
            b64(json.dumps({"alg": "RS256", "kid": rs.kid}).encode()) + ".e30.c2ln",
            "not valid",
        ),
        "no kid, several keys": (jwt.encode(claims(), rs.private, algorithm="RS256"), "publish"),
        "origin-bound, other origin": (rs.mint(claims(origin="https://site.example")), "origin"),
    }


async def test_every_bad_token_kind_is_401_before_the_body_is_read(
    signers: dict[str, Signer],
    make_jwt_function: Callable[..., Awaitable[JWTFunction]],
    http: aiohttp.ClientSession,
) -> None:
    # With both kinds configured the HS256 path has a secret, so alg confusion meets a real key.
    fn = await make_jwt_function(AUTH_JWT_SECRET=SECRET)
    cases = bad_tokens(signers)
    for name, (token, message) in cases.items():
        origin = "https://evil.example" if "origin" in name else None
        status, body = await headers_only(fn.url, token, origin)
        assert status == 401, name
        assert body["error"]["type"] == "authentication_error", name
        assert message in body["error"]["message"], (name, body)
    good = signers["RS256"].mint(claims(origin="https://site.example"))
    assert await call(http, fn.url, good, Origin="https://site.example") == 200


async def test_an_hs256_token_is_refused_when_only_provider_keys_are_configured(
    signers: dict[str, Signer], make_jwt_function: Callable[..., Awaitable[JWTFunction]]
) -> None:
    fn = await make_jwt_function()  # no AUTH_JWT_SECRET
    rs = signers["RS256"]
    pem = rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for key in (pem, SECRET.encode()):
        token = hs256_by_hand({"alg": "HS256", "kid": rs.kid}, claims(), key)
        status, body = await headers_only(fn.url, token)
        assert status == 401
        assert "algorithm" in body["error"]["message"]


# -- claim rules -------------------------------------------------------------------------------


async def test_exp_nbf_and_iat_get_thirty_seconds_of_leeway() -> None:
    settings = load_settings({"AUTH_JWT_SECRET": SECRET}).protection.jwt
    assert settings is not None
    verifier = JWTVerifier(settings, None, clock=Clock(NOW))

    async def verdict(**extra: Any) -> str:
        token = jwt.encode({"sub": "user-42", "iat": NOW, "exp": NOW + 600, **extra}, SECRET)
        try:
            return await verifier.verify(token, None)
        except TokenRefused as refused:
            return str(refused)

    assert await verdict(iat=NOW - 100, exp=NOW - 29) == "user:user-42"
    assert "expired" in await verdict(iat=NOW - 100, exp=NOW - 30)
    assert await verdict(nbf=NOW + 30) == "user:user-42"
    assert "not valid yet" in await verdict(nbf=NOW + 31)
    assert await verdict(iat=NOW + 30, exp=NOW + 600) == "user:user-42"
    assert "not valid yet" in await verdict(iat=NOW + 31, exp=NOW + 600)
    assert "not a number" in await verdict(exp="soon")
    assert "not a number" in await verdict(exp=True)


async def test_the_maximum_lifetime_counts_from_iat_or_from_now() -> None:
    settings = load_settings(
        {"AUTH_JWT_SECRET": SECRET, "AUTH_MAX_TOKEN_LIFETIME": "3600"}
    ).protection.jwt
    assert settings is not None
    verifier = JWTVerifier(settings, None, clock=Clock(NOW))
    base = {"sub": "a"}
    ok = jwt.encode({**base, "iat": NOW - 3000, "exp": NOW + 600}, SECRET)
    assert await verifier.verify(ok, None) == "user:a"
    for too_long in (
        {**base, "iat": NOW - 3000, "exp": NOW + 601},
        {**base, "exp": NOW + 3601},  # no iat: counted from now
    ):
        with pytest.raises(TokenRefused, match="3600 s"):
            await verifier.verify(jwt.encode(too_long, SECRET), None)


async def test_the_operator_names_the_client_and_origin_claims(
    make_function: MakeFunction, http: aiohttp.ClientSession, logs: LogTap
) -> None:
    # Clerk's session tokens carry the page's origin in azp; some sites key users by email.
    function = await make_function(
        AUTH_JWT_SECRET=SECRET, AUTH_JWT_CLIENT_CLAIM="email", AUTH_JWT_ORIGIN_CLAIM="azp"
    )
    token = jwt.encode(
        {"email": "a@example.com", "azp": "https://site.example", "exp": int(time.time()) + 60},
        SECRET,
    )
    assert await call(http, function.url, token, Origin="https://site.example") == 200
    assert json.loads((await logs.requests(1))[-1])["client"] == "user:a@example.com"
    assert await call(http, function.url, token, Origin="https://evil.example") == 401
    assert await call(http, function.url, token) == 401  # bound tokens need an Origin
    status, body = await headers_only(
        function.url, jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET)
    )
    assert (status, body["error"]["message"]) == (401, "The token has no email claim.")
    long_id = jwt.encode({"email": "a" * 129, "exp": int(time.time()) + 60}, SECRET)
    status, body = await headers_only(function.url, long_id)
    assert status == 401
    assert "1 to 128" in body["error"]["message"]


# -- settings, lazy import, the mint helper ------------------------------------------------------


def test_jwt_settings_are_checked_and_secrets_never_echoed() -> None:
    with pytest.raises(SettingsError, match="AUTH_JWT_SECRET has 8 characters") as caught:
        load_settings({"AUTH_JWT_SECRET": "hunter22"})
    assert "hunter22" not in str(caught.value)
    for url in ("http://auth.example.com/jwks.json", "ftp://x/jwks", "https://", "not a url"):
        with pytest.raises(SettingsError, match="AUTH_JWKS_URL"):
            load_settings({"AUTH_JWKS_URL": url, "AUTH_JWT_ISSUER": ISSUER})
    for url in ("http://127.0.0.1:8080/jwks", "http://[::1]:9/j", "http://localhost/j"):
        jwt_settings = load_settings(
            {"AUTH_JWKS_URL": url, "AUTH_JWT_ISSUER": ISSUER}
        ).protection.jwt
        assert jwt_settings is not None
        assert jwt_settings.jwks_url == url
    with pytest.raises(SettingsError, match="needs AUTH_JWT_ISSUER"):
        load_settings({"AUTH_JWKS_URL": "https://x.example/jwks.json"})
    with pytest.raises(SettingsError, match="AUTH_JWT_AUDIENCE is set but"):
        load_settings({"AUTH_JWT_AUDIENCE": "x"})
    with pytest.raises(SettingsError, match="AUTH_JWT_CLIENT_CLAIM"):
        load_settings({"AUTH_JWT_SECRET": SECRET, "AUTH_JWT_CLIENT_CLAIM": "a b"})
    settings = load_settings({"AUTH_JWT_SECRET": SECRET, "AUTH_JWT_AUDIENCE": "b, a"})
    assert settings.protection.jwt is not None
    assert settings.protection.jwt.audience == ("a", "b")
    assert load_settings({}).protection.jwt is None


@pytest.mark.parametrize(
    ("env", "loaded"),
    [({}, False), ({"AUTH_TOKENS": "t" * 20}, False), ({"AUTH_JWT_SECRET": SECRET}, True)],
)
def test_pyjwt_and_cryptography_are_imported_only_when_jwt_auth_is_configured(
    env: dict[str, str], loaded: bool
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AUTH_")}
    probe = "import sys, api.generate; print('jwt' in sys.modules, 'cryptography' in sys.modules)"
    done = subprocess.run(  # noqa: S603  # our own interpreter and a fixed script
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        env={**environ, "OPENAI_API_KEY": "sk-x", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == [str(loaded), str(loaded)]


def test_the_mint_helper_prints_a_jwt_when_the_jwt_secret_is_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH_")}
    done = subprocess.run(
        [sys.executable, "-m", "lib.auth", "mint", "--ttl", "60", "--client", "user-7"],
        cwd=PROJECT_ROOT,
        env={**env, "AUTH_JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
    )
    settings = load_settings({"AUTH_JWT_SECRET": SECRET}).protection.jwt
    assert settings is not None
    verified = asyncio.run(JWTVerifier(settings, None).verify(done.stdout.strip(), None))
    assert verified == "user:user-7"
    minted = mint_jwt(
        SECRET, ttl=60, origin="https://site.example/", client_id="u", clock=Clock(NOW)
    )
    assert jwt.decode(
        minted, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    ) == {
        "sub": "u",
        "iat": NOW,
        "exp": NOW + 60,
        "origin": "https://site.example",
    }


def test_jwt_auth_counts_as_protection_and_the_v1_secret_warns_once(logs: LogTap) -> None:
    GenerateHandler(load_settings({"OPENAI_API_KEY": "sk-x", "AUTH_JWT_SECRET": SECRET}))
    GenerateHandler(
        load_settings(
            {
                "OPENAI_API_KEY": "sk-x",
                "AUTH_JWKS_URL": "https://x.example/j",
                "AUTH_JWT_ISSUER": ISSUER,
            }
        )
    )
    assert not any("UNPROTECTED" in line for line in logs.lines)
    assert not any("deprecated" in line for line in logs.lines)
    GenerateHandler(load_settings({"OPENAI_API_KEY": "sk-x", "AUTH_SIGNING_SECRET": SECRET}))
    warnings = [line for line in logs.lines if "deprecated" in line]
    assert len(warnings) == 1
    assert "AUTH_JWT_SECRET" in warnings[0]
    assert SECRET not in warnings[0]
