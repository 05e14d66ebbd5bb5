"""Users, presence and status items, and the rules for who sees what. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from service.errors import BadRequest

USER_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
MAX_TEXT_CHARS = 280
MAX_AVATAR_CHARS = 2048
_UNSET: Any = object()


class Presence(StrEnum):
    """What a user chooses; watchers see `offline` for `invisible`."""

    ONLINE = "online"
    AWAY = "away"
    BUSY = "busy"
    INVISIBLE = "invisible"


OFFLINE = "offline"


def validate_user_id(value: object, what: str = "user id") -> str:
    """Return `value` when it is a valid user id, else raise `BadRequest` naming `what`."""
    if not isinstance(value, str) or USER_ID_RE.fullmatch(value) is None:
        raise BadRequest(f"{what} must be 1 to 64 characters of A-Z a-z 0-9 _ . : @ -")
    return value


def validate_text(value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest("text must be a string")
    if len(value) > MAX_TEXT_CHARS:
        raise BadRequest(f"text must be at most {MAX_TEXT_CHARS} characters")
    return value


def validate_avatar(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("avatar must be an http(s) URL or null")
    if len(value) > MAX_AVATAR_CHARS:
        raise BadRequest(f"avatar must be at most {MAX_AVATAR_CHARS} characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise BadRequest("avatar must be an http(s) URL or null") from exc
    if parts.scheme not in {"http", "https"} or not parts.netloc or any(c.isspace() for c in value):
        raise BadRequest("avatar must be an http(s) URL or null")
    return value


def validate_presence(value: object) -> Presence:
    if not isinstance(value, str):
        raise BadRequest("presence must be one of online, away, busy, invisible")
    try:
        return Presence(value)
    except ValueError as exc:
        raise BadRequest("presence must be one of online, away, busy, invisible") from exc


@dataclass(frozen=True, slots=True)
class StatusPatch:
    """A requested change: any non-empty subset of presence, text and avatar."""

    presence: Presence | None = None
    text: str | None = None
    avatar: str | None = None
    set_avatar: bool = False

    @classmethod
    def from_fields(cls, body: dict[str, Any]) -> StatusPatch:
        """Validate the `presence`, `text` and `avatar` of `body`; the caller checks other keys."""
        presence = validate_presence(body["presence"]) if "presence" in body else None
        text = validate_text(body["text"]) if "text" in body else None
        has_avatar = "avatar" in body
        avatar = validate_avatar(body["avatar"]) if has_avatar else None
        if presence is None and text is None and not has_avatar:
            raise BadRequest("give at least one of presence, text, avatar")
        return cls(presence, text, avatar, has_avatar)


@dataclass(frozen=True, slots=True)
class Status:
    """A user's stored status: the chosen presence, and whether watchers see them at all.

    `life` orders the users who held this id (see `StatusRow`); it never leaves the service.
    """

    user: str
    presence: Presence = Presence.ONLINE
    text: str = ""
    avatar: str | None = None
    version: int = 0
    updated_at: int = 0
    visible: bool = False
    life: int = 0

    def watcher_item(self) -> dict[str, Any]:
        """The item as every watcher sees it: `offline` with no text unless visible."""
        shown = self.visible and self.presence is not Presence.INVISIBLE
        return {
            "user": self.user,
            "presence": self.presence.value if shown else OFFLINE,
            "text": self.text if shown else "",
            "avatar": self.avatar,
            "version": self.version,
            "updated_at": self.updated_at,
        }

    def own_item(self) -> dict[str, Any]:
        """The item as the user sees it: the chosen presence (invisible too) and the text."""
        return {
            "user": self.user,
            "presence": self.presence.value,
            "text": self.text,
            "avatar": self.avatar,
            "version": self.version,
            "updated_at": self.updated_at,
        }

    def with_patch(self, patch: StatusPatch) -> Status:
        return replace(
            self,
            presence=patch.presence or self.presence,
            text=self.text if patch.text is None else patch.text,
            avatar=patch.avatar if patch.set_avatar else self.avatar,
        )


def unseen_item(user: str) -> dict[str, Any]:
    """The item of a user never seen before."""
    return Status(user).watcher_item()
