"""User ids, status fields and who sees what (PROTOCOL.md: Identities, Status item)."""

from __future__ import annotations

import string
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import (
    Presence,
    Status,
    StatusPatch,
    unseen_item,
    validate_avatar,
    validate_presence,
    validate_text,
    validate_user_id,
)
from service.errors import BadRequest

ID_CHARS = frozenset(string.ascii_letters + string.digits + "_.:@-")
ITEM_KEYS = {"user", "presence", "text", "avatar", "version", "updated_at"}


# ----- user ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    ["a", "Z", "0", "alice", "Bob_42", "a" * 64, "x" * 63, "user@example.com", "ns:user-1.2"],
)
def test_valid_user_ids(user: str) -> None:
    assert validate_user_id(user) == user


@pytest.mark.parametrize("punct", ["_", ".", ":", "@", "-"])
def test_each_allowed_punctuation(punct: str) -> None:
    assert validate_user_id(punct) == punct
    assert validate_user_id(f"a{punct}b") == f"a{punct}b"
    assert validate_user_id(punct * 64) == punct * 64


@pytest.mark.parametrize(
    "user",
    [
        "",
        "a" * 65,
        "@" * 65,
        "a b",
        " alice",
        "alice ",
        "alice\n",
        "al\tice",
        "a\x00b",
        "é",
        "josé",
        "用户",
        "😀",
        "\uff11",  # fullwidth digit one
        "\u212a",  # Kelvin sign, folds to K
        "\u0131",  # dotless i
        "a/b",
        "a#b",
        "a+b",
        "a,b",
        "a{b}",
        "a*b",
        "a%20b",
        "a'b",
        'a"b',
        "a\\b",
    ],
)
def test_invalid_user_ids(user: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_user_id(user)
    assert info.value.code == "bad_request"
    assert info.value.http_status == 400


@pytest.mark.parametrize("value", [None, 1, 1.5, b"alice", ["alice"], {"u": 1}, True])
def test_non_string_user_ids(value: object) -> None:
    with pytest.raises(BadRequest):
        validate_user_id(value)


def test_user_id_error_names_what_was_checked() -> None:
    with pytest.raises(BadRequest, match="buddy"):
        validate_user_id("no spaces", "buddy")


@given(st.text(max_size=70))
def test_user_id_rule_property(user: str) -> None:
    expected_ok = 1 <= len(user) <= 64 and set(user) <= ID_CHARS
    try:
        validate_user_id(user)
    except BadRequest:
        assert not expected_ok
    else:
        assert expected_ok


# ----- text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "at lunch", "a" * 280, "😀" * 280, "e\u0301" * 140, "用" * 280, "x" * 279 + "😀"],
)
def test_text_up_to_280_code_points(text: str) -> None:
    assert validate_text(text) == text


@pytest.mark.parametrize("text", ["a" * 281, "😀" * 281, "e\u0301" * 141, "a" * 280 + "😀"])
def test_text_over_280_code_points(text: str) -> None:
    with pytest.raises(BadRequest, match="280"):
        validate_text(text)


def test_emoji_counts_as_one_character() -> None:
    # 280 emoji are 1120 UTF-8 bytes and 560 UTF-16 units, yet 280 code points.
    text = "👍" * 280
    assert len(text.encode()) == 1120
    assert validate_text(text) == text


@pytest.mark.parametrize("value", [None, 5, ["a"], {"t": "a"}, b"abc"])
def test_text_must_be_a_string(value: object) -> None:
    with pytest.raises(BadRequest):
        validate_text(value)


# ----- avatar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://x/y.png",
        "https://x/y.png",
        "https://cdn.example.com/a/b.png?size=64#frag",
        "http://127.0.0.1:8080/a.png",
    ],
)
def test_http_and_https_avatars(url: str) -> None:
    assert validate_avatar(url) == url


def test_null_avatar_clears() -> None:
    assert validate_avatar(None) is None


def test_avatar_length_limit_is_2048() -> None:
    base = "https://x.example/"
    exact = base + "a" * (2048 - len(base))
    assert len(exact) == 2048
    assert validate_avatar(exact) == exact
    with pytest.raises(BadRequest, match="2048"):
        validate_avatar(exact + "a")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://x/y.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "ws://x/y",
        "//x/y.png",
        "x/y.png",
        "http://",
        "https:///y.png",
        "http://x/a b.png",
        "http://[::1",
    ],
)
def test_other_avatars_are_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        validate_avatar(url)


@pytest.mark.parametrize("value", [1, True, ["http://x/y"], {"url": "http://x/y"}])
def test_avatar_must_be_a_string_or_null(value: object) -> None:
    with pytest.raises(BadRequest):
        validate_avatar(value)


# ----- presence -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["online", "away", "busy", "invisible"])
def test_chosen_presences(value: str) -> None:
    assert validate_presence(value) == Presence(value)


@pytest.mark.parametrize("value", ["offline", "ONLINE", "Away", "", "idle", None, 1, ["online"]])
def test_other_presences_are_refused(value: object) -> None:
    with pytest.raises(BadRequest):
        validate_presence(value)


# ----- StatusPatch ----------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"op": "set_status"}, {"ref": "r1"}, {"other": 1}])
def test_empty_patch_is_an_error(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        StatusPatch.from_fields(body)


def test_patch_of_each_single_field() -> None:
    assert StatusPatch.from_fields({"presence": "away"}) == StatusPatch(presence=Presence.AWAY)
    assert StatusPatch.from_fields({"text": ""}) == StatusPatch(text="")
    assert StatusPatch.from_fields({"avatar": "https://x/y"}) == StatusPatch(
        avatar="https://x/y", set_avatar=True
    )


def test_null_avatar_patch_is_a_clear_not_an_absence() -> None:
    patch = StatusPatch.from_fields({"avatar": None})
    assert patch.set_avatar is True
    assert patch.avatar is None


def test_patch_of_all_fields() -> None:
    patch = StatusPatch.from_fields(
        {"presence": "invisible", "text": "brb", "avatar": "http://x/a.png"}
    )
    assert patch == StatusPatch(Presence.INVISIBLE, "brb", "http://x/a.png", True)


@pytest.mark.parametrize(
    "body",
    [
        {"presence": "offline"},
        {"presence": None},
        {"text": None},
        {"text": "a" * 281},
        {"avatar": "ftp://x/y"},
        {"presence": "away", "text": 5},
    ],
)
def test_patch_with_a_bad_field_is_an_error(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        StatusPatch.from_fields(body)


def test_with_patch_keeps_unset_fields_and_clears_avatar() -> None:
    status = Status("bob", Presence.BUSY, "in a meeting", "https://x/b.png", 3, 100, True)
    assert status.with_patch(StatusPatch(text="free")) == Status(
        "bob", Presence.BUSY, "free", "https://x/b.png", 3, 100, True
    )
    assert status.with_patch(StatusPatch(presence=Presence.AWAY)).text == "in a meeting"
    assert status.with_patch(StatusPatch(avatar=None, set_avatar=True)).avatar is None
    assert status.with_patch(StatusPatch(text="x")).avatar == "https://x/b.png"


# ----- who sees what --------------------------------------------------------------------


def status(presence: Presence, visible: bool) -> Status:
    return Status(
        user="bob",
        presence=presence,
        text="at lunch",
        avatar="https://x/y.png",
        version=42,
        updated_at=1764160000123,
        visible=visible,
    )


@pytest.mark.parametrize("presence", [Presence.ONLINE, Presence.AWAY, Presence.BUSY])
def test_watchers_see_a_visible_users_presence_and_text(presence: Presence) -> None:
    assert status(presence, visible=True).watcher_item() == {
        "user": "bob",
        "presence": presence.value,
        "text": "at lunch",
        "avatar": "https://x/y.png",
        "version": 42,
        "updated_at": 1764160000123,
    }


@pytest.mark.parametrize(
    ("presence", "visible"),
    [
        (Presence.INVISIBLE, True),
        (Presence.INVISIBLE, False),
        (Presence.ONLINE, False),
        (Presence.AWAY, False),
        (Presence.BUSY, False),
    ],
)
def test_watchers_see_offline_without_text(presence: Presence, visible: bool) -> None:
    item = status(presence, visible).watcher_item()
    assert item["presence"] == "offline"
    assert item["text"] == ""
    assert item["version"] == 42
    assert item["updated_at"] == 1764160000123
    assert set(item) == ITEM_KEYS


@pytest.mark.parametrize("presence", list(Presence))
@pytest.mark.parametrize("visible", [True, False])
def test_own_view_shows_chosen_presence_and_text(presence: Presence, visible: bool) -> None:
    assert status(presence, visible).own_item() == {
        "user": "bob",
        "presence": presence.value,
        "text": "at lunch",
        "avatar": "https://x/y.png",
        "version": 42,
        "updated_at": 1764160000123,
    }


@pytest.mark.parametrize("presence", list(Presence))
@pytest.mark.parametrize("visible", [True, False])
def test_watcher_presence_is_never_invisible(presence: Presence, visible: bool) -> None:
    assert status(presence, visible).watcher_item()["presence"] in {
        "online",
        "away",
        "busy",
        "offline",
    }


def test_unseen_user_reads_as_the_contract_says() -> None:
    assert unseen_item("carol") == {
        "user": "carol",
        "presence": "offline",
        "text": "",
        "avatar": None,
        "version": 0,
        "updated_at": 0,
    }


def test_items_serialize_to_the_contract_json() -> None:
    item = orjson.loads(orjson.dumps(Status("dave", visible=False).watcher_item()))
    assert item == {
        "user": "dave",
        "presence": "offline",
        "text": "",
        "avatar": None,
        "version": 0,
        "updated_at": 0,
    }
    own = orjson.loads(orjson.dumps(status(Presence.INVISIBLE, True).own_item()))
    assert own["presence"] == "invisible"
    assert own["text"] == "at lunch"
