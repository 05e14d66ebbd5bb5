"""Redis being down, a single server or some of a cluster's slots, is answered 503."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from service.node.http_api import errors_middleware
from service.redis_conn import REDIS_DOWN


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused."),
        ClusterDownError("The cluster is down"),
        MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
        TryAgainError("Multiple keys request during rehashing of slot"),
        SlotNotCoveredError("Slot 5 is not covered by the cluster"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_redis_down_is_unavailable(error: Exception) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise error

    request = make_mocked_request("PUT", "/v1/users/u1/status")
    response = await errors_middleware(request, handler)
    assert isinstance(response, web.Response)
    assert response.status == 503
    assert response.body is not None
    assert orjson.loads(bytes(response.body))["code"] == "unavailable"


def test_a_script_error_is_not_redis_down() -> None:
    # A script's own error is a fault to report, not an outage to wait out.
    assert not isinstance(ResponseError("ERR Error running script"), REDIS_DOWN)
