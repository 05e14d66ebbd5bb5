"""Client tokens (HS256 JWT) and the backend API key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Any

import jwt
import orjson

from service.domain import validate_user_id
from service.errors import BadRequest, Unauthorized

ALGORITHM = "HS256"
LEEWAY_S = 10
MALFORMED = "token is malformed or not HS256"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def mint_token(user: str, secret: str, ttl_s: int = 3600) -> str:
    """A client token for `user`, valid for `ttl_s` seconds."""
    validate_user_id(user)
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + ttl_s}, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> str:
    """The user id of a valid token; raise `Unauthorized` saying why otherwise.

    Checked here rather than by PyJWT's `decode`, which costs 25 times as much per token
    since 2.15 (a per-character check in Python) and sits on every connect's path. The
    rules are PyJWT's, so both accept the same tokens (`tests/unit/test_auth.py` holds
    the two side by side), with two exceptions refused here: a `crit` or `b64` header
    (RFC 7515 4.1.11, RFC 7797) and a JSON document orjson refuses (not UTF-8, or an
    integer beyond 64 bits).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized(MALFORMED)
    head, body, signature = parts
    header = _json_object(_segment(head))
    if (
        header.get("alg") != ALGORITHM
        or "crit" in header
        or header.get("b64", True) is not True
        or not isinstance(header.get("kid", ""), str)
    ):
        raise Unauthorized(MALFORMED)
    payload = _segment(body)
    expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _segment(signature)):
        raise Unauthorized("token signature is invalid")
    return _subject(_json_object(payload))


def _subject(claims: dict[str, Any]) -> str:
    """The `sub` of claims whose signature holds, checked as RFC 7519 4.1 and PyJWT say."""
    for claim in ("exp", "sub"):
        if claims.get(claim) is None:
            raise Unauthorized(f"token lacks the {claim!r} claim")
    now = time.time()
    for claim in ("iat", "nbf"):
        if claim in claims and _numeric_date(claims[claim]) > now + LEEWAY_S:
            raise Unauthorized("token is not valid yet")
    exp = claims["exp"]
    # PyJWT accepts a numeric string; RFC 7519 wants a NumericDate, a JSON number.
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise Unauthorized("token exp must be a number")
    if _numeric_date(exp) <= now - LEEWAY_S:
        raise Unauthorized("token expired")
    if claims.get("aud"):
        raise Unauthorized("token is for an audience: this service takes none")
    if not isinstance(claims.get("jti", ""), str):
        raise Unauthorized("token jti must be a string")
    try:
        return validate_user_id(claims["sub"], "token sub")
    except BadRequest as exc:
        raise Unauthorized(f"token sub is not a valid user id: {exc.message}") from exc


def _numeric_date(value: Any) -> int:
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        raise Unauthorized(MALFORMED) from None


def _segment(text: str) -> bytes:
    """The bytes of a base64url segment (RFC 7515 2): up to two `=` of padding allowed,
    any other character outside the alphabet refused."""
    data = text.rstrip("=")
    padding = len(text) - len(data)
    if (
        padding > 2
        or (padding and len(text) % 4)
        or len(data) % 4 == 1
        or not _BASE64URL.fullmatch(data)
    ):
        raise Unauthorized(MALFORMED)
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Unauthorized(MALFORMED) from None
    if not isinstance(value, dict):
        raise Unauthorized(MALFORMED)
    return value


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
