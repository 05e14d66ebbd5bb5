"""Client tokens (HS256 JWT with `sub` and `exp`) and the backend API key (PROTOCOL.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.auth import LEEWAY_S, api_key_matches, bearer, mint_token, verify_token
from service.domain import validate_user_id
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


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "b64": False, "crit": ["b64"]},
        {"alg": "HS256", "kid": 7},
        {"alg": "hs256"},
        {"typ": "JWT"},
    ],
)
def test_headers_this_service_cannot_honour_are_refused(header: dict[str, Any]) -> None:
    signing_input = (
        f"{b64(orjson.dumps(header))}.{b64(orjson.dumps({'sub': 'a', 'exp': future()}))}"
    )
    digest = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    refused(f"{signing_input}.{b64(digest)}")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iat": "later"}, "malformed"),
        ({"nbf": 2**40}, "not valid yet"),
        ({"iat": 2**40}, "not valid yet"),
        ({"aud": "another-service"}, "audience"),
        ({"jti": 7}, "jti"),
    ],
)
def test_claims_pyjwt_would_refuse_are_refused(claims: dict[str, Any], reason: str) -> None:
    assert reason in refused(sign({"sub": "alice", "exp": future(), **claims})).message


# ----- the same verdicts as PyJWT's decode, which verify_token replaced -----------------


def pyjwt_verdict(token: str, secret: str) -> str | None:
    """The user the PyJWT-based check accepts the token for, or None if it refuses it."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
            leeway=LEEWAY_S,
        )
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return validate_user_id(claims.get("sub"), "token sub")
    except BadRequest:
        return None


def verdict(token: str, secret: str) -> str | None:
    try:
        return verify_token(token, secret)
    except Unauthorized:
        return None


ABSENT = object()
AN_HOUR = 3600
# Times as offsets from now, far from the leeway's edges so both checks read one clock.
CLAIMS = {
    "sub": [ABSENT, "alice", "u" * 64, "not valid", "", 42, None, ["alice"], "josé"],
    "exp": [ABSENT, -AN_HOUR, AN_HOUR, f"+{AN_HOUR}", float(AN_HOUR), True, None, [1]],
    "iat": [ABSENT, -AN_HOUR, AN_HOUR, f"-{AN_HOUR}", None, [1], 1.5],
    "nbf": [ABSENT, -AN_HOUR, AN_HOUR, None, "soon"],
    "aud": [ABSENT, "", "svc", [], ["svc"], None],
    "jti": [ABSENT, "id-1", 7, None],
    "iss": [ABSENT, "me", 5],
}
HEADERS = {
    "alg": ["HS256", "HS256", "HS512", "none", ABSENT],
    "typ": [ABSENT, "JWT", "at+jwt", 5],
    "kid": [ABSENT, "k1", None],
}
MUTATIONS = ["none", "pad", "pad-all", "pad-too-much", "junk", "flip", "space", "dot", "utf8"]


def as_time(value: Any, now: int) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + value
    if isinstance(value, str) and value[:1] in "+-":
        return str(now + int(value))
    return value


def build(header: dict[str, Any], claims: dict[str, Any], secret: str, mutation: str) -> str:
    now = int(time.time())
    head = b64(orjson.dumps({k: v for k, v in header.items() if v is not ABSENT}))
    body = {
        k: as_time(v, now) if k in ("exp", "iat", "nbf") else v
        for k, v in claims.items()
        if v is not ABSENT
    }
    signing_input = f"{head}.{b64(orjson.dumps(body))}"
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(header["alg"])
    signature = (
        b64(hmac.new(secret.encode(), signing_input.encode(), digest).digest()) if digest else ""
    )
    token = f"{signing_input}.{signature}"
    parts = token.split(".")
    if mutation == "pad":  # the signature's padding is not signed
        parts[2] += "=" * (-len(parts[2]) % 4)
    elif mutation == "pad-all":
        parts = [part + "=" * (-len(part) % 4) for part in parts]
    elif mutation == "pad-too-much":
        parts[0] += "==="
    elif mutation == "junk":
        parts[2] = parts[2][:4] + "!" + parts[2][4:]
    elif mutation == "flip" and parts[2]:
        parts[2] = ("B" if parts[2][0] == "A" else "A") + parts[2][1:]
    elif mutation == "space":
        parts[1] = " " + parts[1]
    elif mutation == "dot":
        parts.append("")
    elif mutation == "utf8":
        parts[1] += "é"
    return ".".join(parts)


GOOD = {"alg": "HS256", "typ": "JWT", "sub": "alice", "exp": AN_HOUR}


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """A valid token with up to three of its header fields and claims changed, signed
    with the secret or another, and perhaps mangled after signing."""
    fields = dict(GOOD)
    choices = {**HEADERS, **CLAIMS}
    for name in draw(st.lists(st.sampled_from(sorted(choices)), max_size=3, unique=True)):
        fields[name] = draw(st.sampled_from(choices[name]))
    header = {name: fields.get(name, ABSENT) for name in HEADERS}
    claims = {name: fields.get(name, ABSENT) for name in CLAIMS}
    secret = draw(st.sampled_from([SECRET, SECRET, OTHER_SECRET]))
    mutation = draw(st.sampled_from(["none", "none", "none", *MUTATIONS]))
    return build(header, claims, secret, mutation)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(token=tokens())
def test_verdicts_match_pyjwt(token: str) -> None:
    assert verdict(token, SECRET) == pyjwt_verdict(token, SECRET), token


def test_the_comparison_sees_both_verdicts() -> None:
    accepted = build(
        {"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": AN_HOUR}, SECRET, "pad"
    )
    assert verdict(accepted, SECRET) == pyjwt_verdict(accepted, SECRET) == "alice"
    forged = build({"alg": "HS256"}, {"sub": "alice", "exp": AN_HOUR}, OTHER_SECRET, "none")
    assert verdict(forged, SECRET) is None and pyjwt_verdict(forged, SECRET) is None


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
