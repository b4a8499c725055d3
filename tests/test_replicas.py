"""REDIS_MIN_REPLICAS_ACK: a delivery is answered 202 only once enough replicas hold it (Redis
WAIT), else 503 with Retry-After within the request's Redis timeout (a real primary and
replica; the replica paused with SIGSTOP, or stopped)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from casefetch.constants import INBOX_KEY, INGEST_QUEUE
from casefetch.protocol import make_delivery
from casefetch_tools.redis_server import RedisServer
from receiver import create_app
from receiver.enqueue import EnqueueError, Enqueuer
from tests import receiver_helpers as rh
from tests.sentinels import replicate
from tests.waiting import wait_for

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Pair = tuple[RedisServer, RedisServer]
BODY = b'{"cfRef": "CF-ACK"}'
TIMEOUT = 1.0


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """``server`` stopped in its tracks (SIGSTOP): connected, acknowledging nothing."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


async def receiver(aiohttp_client: ClientFactory, url: str, acks: int) -> TestClient[Any, Any]:
    settings = rh.settings(url, min_replicas_ack=acks, redis_timeout_seconds=TIMEOUT)
    return await aiohttp_client(create_app(settings))


async def post(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.post("/webhooks", data=BODY, headers=rh.bearer())
    answer = await response.json()
    return response.status, {**answer, **response.headers}, time.monotonic() - started


async def test_a_delivery_is_accepted_once_a_replica_holds_it(
    aiohttp_client: ClientFactory, replicated: Pair
) -> None:
    primary, replica = replicated
    client = await receiver(aiohttp_client, primary.url, acks=1)
    status, answer, _ = await post(client)
    assert status == 202
    # WAIT answered: the replica has it now, not eventually.
    with redis.Redis(port=replica.port) as on_replica:
        assert on_replica.hexists(INBOX_KEY, answer["deliveryId"])
    with paused(replica):
        status, answer, seconds = await post(client)
        assert status == 503 and answer["Retry-After"] == "5"
        assert seconds < TIMEOUT + 0.5
    status, _, _ = await post(client)
    assert status == 202


async def test_concurrent_deliveries_share_a_wait(
    aiohttp_client: ClientFactory, replicated: Pair
) -> None:
    primary, replica = replicated
    client = await receiver(aiohttp_client, primary.url, acks=1)
    answers = await asyncio.gather(*(post(client) for _ in range(50)))
    assert [status for status, _, _ in answers] == [202] * 50
    with redis.Redis(port=replica.port) as on_replica:
        assert on_replica.llen(INGEST_QUEUE) == 50


async def test_without_acknowledgements_a_paused_replica_changes_nothing(
    aiohttp_client: ClientFactory, replicated: Pair
) -> None:
    primary, replica = replicated
    client = await receiver(aiohttp_client, primary.url, acks=0)
    with paused(replica):
        status, _, seconds = await post(client)
    assert status == 202 and seconds < TIMEOUT / 2


async def test_ready_only_with_enough_replicas(
    aiohttp_client: ClientFactory, replicated: Pair
) -> None:
    primary, replica = replicated
    client = await receiver(aiohttp_client, primary.url, acks=1)
    assert (await client.get("/readyz")).status == 200
    replica.kill()
    with redis.Redis(port=primary.port) as on_primary:
        wait_for(lambda: on_primary.info("replication")["connected_slaves"] == 0, 10)
    assert (await client.get("/readyz")).status == 503
    assert (await post(client))[0] == 503
    unreplicated = await receiver(aiohttp_client, primary.url, acks=0)
    assert (await unreplicated.get("/readyz")).status == 200
    replicate(replica.start(), primary)
    assert (await client.get("/readyz")).status == 200


@pytest.mark.parametrize("acks", [1, 2])
async def test_redis_py_waits_on_the_connection_it_wrote_on(replicated: Pair, acks: int) -> None:
    """The receiver's path for URLs the pipe does not take (TLS, Unix sockets)."""
    primary, replica = replicated
    enqueuer = Enqueuer(aioredis.Redis.from_url(primary.url), TIMEOUT, min_replicas_ack=acks)
    delivery = make_delivery(BODY, {"Content-Type": "application/json"})
    try:
        if acks == 1:
            await enqueuer.enqueue(delivery)
            with redis.Redis(port=replica.port) as on_replica:
                assert on_replica.hexists(INBOX_KEY, delivery["deliveryId"])
            assert await enqueuer.ping()
            with paused(replica), pytest.raises(EnqueueError, match="0 of 1 replicas"):
                await enqueuer.enqueue(make_delivery(BODY, {}))
        else:  # more than there are
            with pytest.raises(EnqueueError, match="1 of 2 replicas"):
                await enqueuer.enqueue(delivery)
            assert not await enqueuer.ping()
    finally:
        await enqueuer.close()
