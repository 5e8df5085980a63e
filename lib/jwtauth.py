"""Standard JWTs (RFC 7519): HS256 with ``AUTH_JWT_SECRET``, and an auth provider's RS256 /
ES256 / EdDSA tokens checked against its published key set (``AUTH_JWKS_URL``, RFC 7517).

Imported only when one of those is set (``lib.auth.build_authenticator``): PyJWT imports
``cryptography`` (docs/protection.md has the measured cost). PyJWT checks the signature, the
pinned algorithm, ``iss`` and ``aud``; the times (``exp``, ``nbf``, ``iat``, the maximum lifetime)
are checked here against an injected clock, as itsdangerous does, so tests never sleep.

Algorithms are pinned by where the key comes from, never by the token: HS256 only with the shared
secret, and for a provider key only the algorithm its JWK names (or its key type implies), so
``alg: none`` and HS/RS confusion have no path to a key. Symmetric keys in a JWKS are ignored.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import jwt

from lib.config import JWTSettings
from lib.errors import APIError, AuthUnavailable
from lib.log import warn

LEEWAY = 30.0  # seconds of clock skew allowed on exp, nbf and iat
MIN_REFRESH_INTERVAL = 60.0  # at most one JWKS fetch a minute, whatever the tokens say
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
MAX_CLIENT_ID_CHARS = 128
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class Fetch(Protocol):
    """GET ``url``; the body, or ``APIError`` (``lib.upstream.UpstreamClient.fetch``)."""

    def __call__(self, url: str, *, within: float, max_bytes: int) -> Awaitable[bytes]: ...


class KeySet:
    """A provider's signing keys, kept per instance and asked for rarely.

    Fetched on the first token that needs them, used for ``max_age`` seconds, then fetched again.
    A ``kid`` the set does not hold (the provider rotated) also fetches again, but no fetch of any
    kind happens within ``MIN_REFRESH_INTERVAL`` of the previous one, so a flood of made-up
    ``kid`` values costs one request a minute. When the provider cannot be reached, the old keys
    serve for one more ``max_age`` at most; with none, tokens get 503 (``AuthUnavailable``).
    Concurrent requests share one fetch.
    """

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        *,
        max_age: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.clock = clock
        self._fetch = fetch
        self._max_age = max_age
        self._timeout = timeout
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None

    async def get(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for ``kid`` (``None``: the set's only key), or ``None`` if the set has none."""
        if self.clock() - self._fetched_at >= self._max_age:
            await self._refresh()
        if self._keys is None or self.clock() - self._fetched_at >= 2 * self._max_age:
            wait = max(1, math.ceil(self._attempted_at + MIN_REFRESH_INTERVAL - self.clock()))
            raise AuthUnavailable(
                "The function cannot check this token now: the auth provider's keys could not "
                "be fetched. Try again shortly.",
                headers={"Retry-After": str(wait)},
            )
        key = self._lookup(kid)
        if key is None:
            await self._refresh()
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if self._keys is None:
            return None
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        running = self._inflight
        if running is None or running.done() or running.get_loop() is not loop:
            if self.clock() - self._attempted_at < MIN_REFRESH_INTERVAL:
                return
            self._attempted_at = self.clock()
            running = self._inflight = loop.create_task(self._download())
        # Shielded: a caller that hangs up must not cancel the fetch the others wait for.
        await asyncio.shield(running)

    async def _download(self) -> None:
        try:
            body = await self._fetch(self.url, within=self._timeout, max_bytes=MAX_JWKS_BYTES)
            keys = parse_jwks(body)
        except (APIError, ValueError) as error:
            message = error.message if isinstance(error, APIError) else str(error)
            warn(f"AUTH_JWKS_URL: the key set could not be fetched: {message}", url=self.url)
            return
        self._keys = keys
        self._fetched_at = self.clock()


def parse_jwks(body: bytes) -> dict[str | None, jwt.PyJWK]:
    """The usable signing keys of a JWKS document by ``kid``; ``ValueError`` if there are none.

    Skipped: keys for encryption (``use`` other than ``sig``), symmetric keys, and algorithms
    outside ``ASYMMETRIC`` (a JWK's ``alg`` pins it; otherwise its key type and curve do).
    """
    document: Any = json.loads(body)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the document is not a JWKS (no keys list)")
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if key.algorithm_name in ASYMMETRIC:
            kid = entry.get("kid")
            keys[kid if isinstance(kid, str) else None] = key
    if not keys:
        raise ValueError("the key set holds no usable signing key")
    return keys


class TokenRefused(Exception):
    """Raised with the message for the caller's 401 (``lib.auth`` adds the challenge)."""


class JWTVerifier:
    """Checks one JWT and returns the client id it names (``user:<sub>``)."""

    def __init__(
        self,
        settings: JWTSettings,
        fetch: Fetch | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._settings = settings
        self._secret = settings.secret
        self.keys: KeySet | None = None
        if settings.jwks_url is not None:
            if fetch is None:
                raise ValueError("AUTH_JWKS_URL needs a fetch function")
            self.keys = KeySet(
                settings.jwks_url,
                fetch,
                max_age=settings.jwks_cache_seconds,
                timeout=settings.jwks_timeout,
            )
        self._audience = list(settings.audience) or None
        self._decoder = jwt.PyJWT(
            options={
                "verify_exp": False,  # the times are checked in _check_times, on our clock
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["exp", settings.client_claim],
                "enforce_minimum_key_length": True,
            }
        )

    async def verify(self, token: str, origin: str | None) -> str:
        """The client id, or ``TokenRefused`` saying what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("The token is not valid.") from None
        alg, kid = header.get("alg"), header.get("kid")
        key: Any
        if alg == "HS256" and self._secret is not None:
            key, algorithm = self._secret, "HS256"
        elif alg in ASYMMETRIC and self.keys is not None:
            jwk = await self.keys.get(kid if isinstance(kid, str) else None)
            if jwk is None:
                raise TokenRefused("The token is signed with a key the provider does not publish.")
            key, algorithm = jwk.key, jwk.algorithm_name
        else:
            raise TokenRefused("The token is signed with an algorithm this function does not take.")
        claims = self._decode(token, key, algorithm)
        self._check_times(claims)
        bound = claims.get(self._settings.origin_claim)
        if bound is not None and (
            not isinstance(bound, str) or origin is None or origin.rstrip("/") != bound.rstrip("/")
        ):
            raise TokenRefused("The token is not valid for this page's origin.")
        client = claims[self._settings.client_claim]
        if not isinstance(client, str) or not 0 < len(client) <= MAX_CLIENT_ID_CHARS:
            raise TokenRefused(
                f"The token's {self._settings.client_claim} claim must be a string of 1 to "
                f"{MAX_CLIENT_ID_CHARS} characters."
            )
        return "user:" + client

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        try:
            return self._decoder.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._settings.issuer,
            )
        except jwt.InvalidAudienceError:
            raise TokenRefused("The token is not meant for this function (aud).") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("The token's issuer (iss) is not accepted here.") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRefused(f"The token has no {error.claim} claim.") from None
        except jwt.PyJWTError:
            raise TokenRefused("The token is not valid.") from None

    def _check_times(self, claims: dict[str, Any]) -> None:
        """RFC 7519 4.1.4-4.1.6 with ``LEEWAY``, plus the maximum lifetime (``exp`` minus ``iat``,
        or minus now when there is no ``iat``)."""
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None and name != "exp":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenRefused(f"The token's {name} claim is not a number of seconds.")
            if not math.isfinite(value):
                raise TokenRefused(f"The token's {name} claim is not a number of seconds.")
            times[name] = value
        now = self.clock()
        if times["exp"] <= now - LEEWAY:
            raise TokenRefused("The token has expired; get a new one.")
        if max(times.get("nbf", -math.inf), times.get("iat", -math.inf)) > now + LEEWAY:
            raise TokenRefused("The token is not valid yet (nbf or iat is in the future).")
        if times["exp"] - times.get("iat", now) > self._settings.max_lifetime:
            raise TokenRefused(
                "The token is valid for longer than this function accepts "
                f"({self._settings.max_lifetime} s, AUTH_MAX_TOKEN_LIFETIME)."
            )
