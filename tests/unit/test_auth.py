"""Client tokens (HS256 JWT with `sub` and `exp`) and the backend API key (PROTOCOL.md)."""

from __future__ import annotations

import base64
import time
from typing import Any

import jwt
import orjson
import pytest

from service.auth import LEEWAY_S, api_key_matches, bearer, mint_token, verify_token
from service.errors import BadRequest, Unauthorized

# 64 bytes: long enough for HS256 and HS512 without PyJWT's short-key warning.
SECRET = "s3cret-" + "x" * 57
OTHER_SECRET = "other-" + "y" * 58


def sign(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    return ".".join([b64(orjson.dumps(header)), b64(orjson.dumps(claims)), b64(signature)])


def refused(token: str, secret: str = SECRET) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verify_token(token, secret)
    assert info.value.code == "unauthorized"
    assert info.value.http_status == 401
    assert info.value.message
    return info.value


def future() -> int:
    return int(time.time()) + 3600


# ----- mint / verify --------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "a", "u" * 64, "user@example.com", "ns:a_b.c-d"])
def test_mint_verify_round_trip(user: str) -> None:
    assert verify_token(mint_token(user, SECRET), SECRET) == user


def test_minted_token_is_hs256_with_sub_and_exp() -> None:
    token = mint_token("alice", SECRET, ttl_s=120)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120
    assert abs(claims["exp"] - (time.time() + 120)) < 5


def test_mint_refuses_an_invalid_user() -> None:
    with pytest.raises(BadRequest):
        mint_token("not valid", SECRET)


def test_token_signed_elsewhere_with_the_secret_is_accepted() -> None:
    assert verify_token(sign({"sub": "bob", "exp": future()}), SECRET) == "bob"


# ----- refusals -------------------------------------------------------------------------


def test_expired_token_is_refused() -> None:
    token = sign({"sub": "alice", "exp": int(time.time()) - LEEWAY_S - 30})
    assert "expired" in refused(token).message


def test_minted_token_with_negative_ttl_is_expired() -> None:
    token = mint_token("alice", SECRET, ttl_s=-(LEEWAY_S + 60))
    assert "expired" in refused(token).message


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "alice", "exp": future()}, None, algorithm="none")
    refused(token)


def test_alg_none_with_a_forged_header_is_refused() -> None:
    refused(forged({"alg": "none", "typ": "JWT"}, {"sub": "alice", "exp": future()}, b""))


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_refused(algorithm: str) -> None:
    refused(sign({"sub": "alice", "exp": future()}, algorithm=algorithm))


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
def test_asymmetric_style_tokens_are_refused(alg: str) -> None:
    refused(forged({"alg": alg, "typ": "JWT"}, {"sub": "alice", "exp": future()}))


def test_missing_exp_is_refused() -> None:
    assert "exp" in refused(sign({"sub": "alice"})).message


def test_missing_sub_is_refused() -> None:
    assert "sub" in refused(sign({"exp": future()})).message


@pytest.mark.parametrize("sub", ["", "not valid", "u" * 65, "josé", "a/b", 42, None, ["alice"]])
def test_sub_that_is_not_a_valid_user_id_is_refused(sub: Any) -> None:
    refused(sign({"sub": sub, "exp": future()}))


def test_wrong_secret_is_refused() -> None:
    token = sign({"sub": "alice", "exp": future()}, secret=OTHER_SECRET)
    assert "signature" in refused(token).message


def test_tampered_claims_are_refused() -> None:
    header, _, signature = mint_token("alice", SECRET).split(".")
    claims = b64(orjson.dumps({"sub": "mallory", "exp": future()}))
    refused(f"{header}.{claims}.{signature}")


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "a.b.c.d", "Bearer x.y.z", "ey.ey.", "😀.😀.😀"]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    refused(token)


@pytest.mark.parametrize("exp", ["tomorrow", None, [1]])
def test_malformed_exp_is_refused(exp: Any) -> None:
    refused(sign({"sub": "alice", "exp": exp}))


# ----- bearer() -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc  ", "abc"),
        ("Bearer a b", "a b"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("Basic dXNlcjpwdw==", None),
        ("Token abc", None),
        ("Bearerabc", None),
        ("abc", None),
    ],
)
def test_bearer(header: str | None, expected: str | None) -> None:
    assert bearer(header) == expected


def test_bearer_token_verifies() -> None:
    token = bearer(f"Bearer {mint_token('alice', SECRET)}")
    assert token is not None
    assert verify_token(token, SECRET) == "alice"


# ----- api_key_matches() ----------------------------------------------------------------


def test_api_key_matches() -> None:
    key = "k" * 32
    assert api_key_matches(key, key)
    assert api_key_matches(bearer(f"Bearer {key}"), key)


@pytest.mark.parametrize("given", [None, "", "k" * 31, "k" * 33, "K" * 32, "k" * 31 + "ü"])
def test_api_key_mismatches(given: str | None) -> None:
    assert not api_key_matches(given, "k" * 32)
