"""Caller authentication: static bearer tokens, standard JWTs, and the deprecated v1 tokens.

All arrive as ``Authorization: Bearer <token>`` (RFC 6750). Static tokens (``AUTH_TOKENS``) suit
a site's own server calling the function. JWTs (``AUTH_JWT_SECRET``, ``AUTH_JWKS_URL``) suit
browsers: minted by the site's server with any JWT library, or the auth provider's own token;
they are checked in ``lib/jwtauth.py``, imported only when configured (PyJWT and cryptography
cost import time).

Deprecated (docs/protection.md has the migration): the project's own ``v1.<payload>.<signature>``
format (``AUTH_SIGNING_SECRET``), where ``payload`` is base64url (no padding) of compact JSON
``{"exp": <unix seconds>, "o": <origin>, "c": <client id>}`` (``o`` and ``c`` optional), and
``signature`` is base64url of HMAC-SHA256(secret, ``"v1." + payload``). It is still accepted,
within ``AUTH_MAX_TOKEN_LIFETIME``. Every comparison of secret material is constant-time
(``hmac.compare_digest``). Clocks are injectable, as in itsdangerous, so expiry is tested without
sleeping.

Mint an HS256 JWT (``AUTH_JWT_SECRET``; else a v1 token from ``AUTH_SIGNING_SECRET``)::

    python -m lib.auth mint --ttl 600 --origin https://example.com --client user-42
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, NamedTuple

from lib.config import Protection, default
from lib.errors import AuthenticationError

if TYPE_CHECKING:
    from lib.jwtauth import Fetch, JWTVerifier

VERSION = "v1"
MAX_TOKEN_CHARS = 8192  # provider JWTs with many claims run to a few kilobytes
MAX_CLIENT_ID_CHARS = 128
CHALLENGE = 'Bearer realm="generate"'


class Caller(NamedTuple):
    """Who is calling, as far as authentication can tell (``None``: authentication is off)."""

    client_id: str | None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), signed_part.encode("ascii"), hashlib.sha256)
    return _b64encode(mac.digest())


def mint_token(
    secret: str,
    *,
    ttl: float = 600,
    origin: str | None = None,
    client_id: str | None = None,
    clock: Callable[[], float] = time.time,
) -> str:
    """A token valid for ``ttl`` seconds; call it from the site's own server code.

    ``origin`` (like ``https://example.com``) makes the token valid only from pages of that
    origin (checked against the request's ``Origin`` header); ``client_id`` makes rate limits
    and budgets apply per user of the site instead of per network address.
    """
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    if client_id is not None and not 0 < len(client_id) <= MAX_CLIENT_ID_CHARS:
        raise ValueError(f"client_id must have 1 to {MAX_CLIENT_ID_CHARS} characters")
    claims: dict[str, object] = {"exp": int(clock() + ttl)}
    if origin is not None:
        claims["o"] = origin.rstrip("/")
    if client_id is not None:
        claims["c"] = client_id
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signed_part = f"{VERSION}.{payload}"
    return f"{signed_part}.{_sign(secret, signed_part)}"


def _invalid(message: str) -> AuthenticationError:
    return AuthenticationError(
        message,
        headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'},
    )


class Authenticator:
    """Checks the bearer token of each request; built once from the settings."""

    def __init__(
        self,
        tokens: Collection[str],
        signing_secret: str | None,
        *,
        max_lifetime: int = default("AUTH_MAX_TOKEN_LIFETIME"),
        jwt: JWTVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Compare fixed-length digests, so neither the tokens' lengths nor their count leak.
        self._digests = [hashlib.sha256(t.encode("utf-8")).digest() for t in tokens]
        self._secret = signing_secret
        self._max_lifetime = max_lifetime
        self.jwt = jwt
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._digests or self._secret or self.jwt)

    async def authenticate(self, authorization: str | None, origin: str | None) -> Caller:
        """The caller, or AuthenticationError (401) saying what is wrong with the token."""
        if not self.enabled:
            return Caller(client_id=None)
        if authorization is None:
            raise AuthenticationError(
                "This endpoint needs a token: send Authorization: Bearer <token>.",
                headers={"WWW-Authenticate": CHALLENGE},
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise _invalid("Send the token as Authorization: Bearer <token>.")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        matched = False
        for known in self._digests:  # no early exit: the time spent does not depend on which
            matched |= hmac.compare_digest(digest, known)
        if matched:
            # Each static token is its own client; its hash prefix names it in limits and logs.
            return Caller(client_id="token:" + digest.hex()[:16])
        if self._secret is not None and token.startswith(VERSION + "."):
            return self._verify_signed(token, origin)
        if self.jwt is not None and token.count(".") == 2:
            from lib.jwtauth import TokenRefused  # loaded already: self.jwt comes from it

            try:
                return Caller(client_id=await self.jwt.verify(token, origin))
            except TokenRefused as refused:
                raise _invalid(str(refused)) from None
        raise _invalid("The token is not valid.")

    def _verify_signed(self, token: str, origin: str | None) -> Caller:
        assert self._secret is not None
        signed_part, _, signature = token.rpartition(".")
        expected = _sign(self._secret, signed_part)
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace")):
            raise _invalid("The token is not valid.")
        try:
            claims = json.loads(_b64decode(signed_part[len(VERSION) + 1 :]))
        except (binascii.Error, ValueError):
            raise _invalid("The token is not valid.") from None
        expires = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(expires, bool) or not isinstance(expires, int):
            raise _invalid("The token is not valid.")
        now = self.clock()
        if now >= expires:
            raise _invalid("The token has expired; get a new one from the site.")
        if expires - now > self._max_lifetime:
            raise _invalid(
                "The token is valid for longer than this function accepts "
                f"({self._max_lifetime} s, AUTH_MAX_TOKEN_LIFETIME)."
            )
        bound_origin = claims.get("o")
        if bound_origin is not None and (origin is None or origin.rstrip("/") != bound_origin):
            raise _invalid("The token is not valid for this page's origin.")
        client = claims.get("c")
        if client is not None and not isinstance(client, str):
            raise _invalid("The token is not valid.")
        return Caller(client_id=None if client is None else "user:" + client)


def build_authenticator(protection: Protection, fetch: Fetch | None) -> Authenticator:
    """The authenticator the settings ask for; PyJWT is imported only if JWTs are configured.

    ``fetch`` GETs the provider's JWKS through the function's one HTTP session.
    """
    verifier = None
    if protection.jwt is not None:
        from lib.jwtauth import JWTVerifier  # deliberately lazy: cold start

        verifier = JWTVerifier(protection.jwt, fetch)
    return Authenticator(
        protection.auth_tokens,
        protection.auth_signing_secret,
        max_lifetime=protection.auth_max_token_lifetime,
        jwt=verifier,
    )


def mint_jwt(
    secret: str,
    *,
    ttl: float = 600,
    origin: str | None = None,
    client_id: str,
    clock: Callable[[], float] = time.time,
) -> str:
    """An HS256 JWT for ``AUTH_JWT_SECRET``, as a site's server would mint it with PyJWT."""
    import jwt  # the command line pays for it, not the function

    now = int(clock())
    claims: dict[str, object] = {"sub": client_id, "iat": now, "exp": now + int(ttl)}
    if origin is not None:
        claims["origin"] = origin.rstrip("/")
    return jwt.encode(claims, secret, algorithm="HS256")


def main(argv: list[str] | None = None) -> int:
    import argparse  # only the command line needs it; the function's cold start does not

    parser = argparse.ArgumentParser(prog="python -m lib.auth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    mint = commands.add_parser(
        "mint", help="print a token (HS256 JWT with AUTH_JWT_SECRET, else v1)"
    )
    mint.add_argument("--ttl", type=float, default=600, help="seconds it stays valid")
    mint.add_argument("--origin", help="the only page origin it is valid from")
    mint.add_argument("--client", help="the client id its limits and budget count against")
    args = parser.parse_args(argv)
    jwt_secret = os.environ.get("AUTH_JWT_SECRET", "").strip()
    secret = os.environ.get("AUTH_SIGNING_SECRET", "").strip()
    if not jwt_secret and not secret:
        print("Set AUTH_JWT_SECRET to the function's JWT secret.", file=sys.stderr)
        return 2
    try:
        if jwt_secret:
            if not args.client:
                print("error: a JWT needs --client (its sub claim)", file=sys.stderr)
                return 2
            print(mint_jwt(jwt_secret, ttl=args.ttl, origin=args.origin, client_id=args.client))
        else:
            print("warning: v1 tokens are deprecated; set AUTH_JWT_SECRET", file=sys.stderr)
            print(mint_token(secret, ttl=args.ttl, origin=args.origin, client_id=args.client))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
