"""The one error family of buddycast; only the edges turn it into a close code or HTTP status."""

from __future__ import annotations


class BuddycastError(Exception):
    """Base error: a protocol `code`, a human message and the HTTP status it maps to."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(BuddycastError):
    code = "bad_request"
    http_status = 400


class TooLarge(BuddycastError):
    code = "too_large"
    http_status = 413


class RateLimited(BuddycastError):
    code = "rate_limited"
    http_status = 429


class Unauthorized(BuddycastError):
    code = "unauthorized"
    http_status = 401


class NotFound(BuddycastError):
    code = "not_found"
    http_status = 404


class ListFull(BuddycastError):
    code = "list_full"
    http_status = 409


class Unavailable(BuddycastError):
    """A dependency (Redis, the database) is down: the client may try again."""

    code = "unavailable"
    http_status = 503
