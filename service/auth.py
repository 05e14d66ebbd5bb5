"""Client tokens (HS256 JWT) and the backend API key."""

from __future__ import annotations

import hmac
import time

import jwt

from service.domain import validate_user_id
from service.errors import BadRequest, Unauthorized

ALGORITHM = "HS256"
LEEWAY_S = 10


def mint_token(user: str, secret: str, ttl_s: int = 3600) -> str:
    """A client token for `user`, valid for `ttl_s` seconds."""
    validate_user_id(user)
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl_s}, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> str:
    """The user id of a valid token; raise `Unauthorized` saying why otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"token lacks the {exc.claim!r} claim") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized("token signature is invalid") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("token is malformed or not HS256") from exc
    # PyJWT accepts a numeric string; RFC 7519 wants a NumericDate, a JSON number.
    if isinstance(claims.get("exp"), bool) or not isinstance(claims.get("exp"), int | float):
        raise Unauthorized("token exp must be a number")
    try:
        return validate_user_id(claims.get("sub"), "token sub")
    except BadRequest as exc:
        raise Unauthorized(f"token sub is not a valid user id: {exc.message}") from exc


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def api_key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of the backend API key."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
