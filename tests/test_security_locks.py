"""The case and file locks outlive their timeout while work goes on (renewed in the background)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from casefetch.constants import lock_key
from casefetch_tools.redis_server import RedisServer
from tests.waiting import wait_for
from worker.bookkeeping import Bookkeeping


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.db_url(6))
    yield connection
    connection.close()


def test_a_lock_held_past_its_timeout_is_kept(client: redis.Redis) -> None:
    books = Bookkeeping(client, lock_seconds=0.3)
    key = lock_key("case", "cases/CF-LONG")
    with books.lock("case", "cases/CF-LONG"):
        started = time.monotonic()
        # Long work: three times the lock's timeout, during which nobody else may take it.
        wait_for(
            lambda: time.monotonic() - started > 0.9 or not client.exists(key),
            timeout=5,
            message="the work to end or the lock to expire",
        )
        assert client.exists(key), "the lock expired while its holder was still working"
    assert not client.exists(key)
