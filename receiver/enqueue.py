"""The enqueue path: one Redis round trip, acknowledged before the receiver answers 2xx.

It queues the message (the delivery's reference) and keeps the delivery in the inbox
(:data:`casefetch.constants.INBOX_KEY`) in one atomic step: the MULTI/EXEC transaction of
:func:`casefetch.protocol.enqueue_commands`, through the pipe or through redis-py.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from casefetch.protocol import (
    Delivery,
    enqueue_commands,
    inbox_entry,
    ingest_message,
)
from casefetch.redis_target import RedisTarget
from receiver.redis_pipe import RedisPipe


class EnqueueError(Exception):
    """Redis did not take the payload; the sender must try again later."""


class Enqueuer:
    """Writes deliveries to the ingest queue as Celery task messages.

    Through a :class:`RedisPipe` when the URL allows (it costs a fraction of redis-py per
    command), else through redis-py.
    """

    def __init__(
        self, redis: aioredis.Redis, timeout_seconds: float, pipe: RedisPipe | None = None
    ) -> None:
        self.redis = redis
        self.timeout_seconds = timeout_seconds
        self.pipe = pipe

    @classmethod
    def to(cls, target: RedisTarget, timeout_seconds: float) -> Enqueuer:
        client = target.async_client(
            socket_timeout=timeout_seconds,
            socket_connect_timeout=min(timeout_seconds, 2.0),
            retry=Retry(NoBackoff(), 1),
            max_connections=256,
        )
        pipe = (
            RedisPipe.from_url(target.url, min(timeout_seconds, 2.0))
            if RedisPipe.supports(target.url)
            else None
        )
        return cls(client, timeout_seconds, pipe)

    async def enqueue(self, delivery: Delivery) -> None:
        message, entry = ingest_message(delivery), inbox_entry(delivery)
        commands = enqueue_commands(message, entry, delivery["deliveryId"], time.time())
        try:
            if self.pipe is not None:  # the pipe times out itself, for less than a Timeout
                await self.pipe.transaction(*commands, timeout=self.timeout_seconds)
            else:
                async with asyncio.timeout(self.timeout_seconds):
                    async with self.redis.pipeline(transaction=True) as transaction:
                        for command in commands:
                            transaction.execute_command(*command)
                        await transaction.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise EnqueueError(f"{type(exc).__name__}: {exc}") from exc

    async def ping(self) -> bool:
        try:
            if self.pipe is not None:
                return await self.pipe.ping(self.timeout_seconds)
            async with asyncio.timeout(self.timeout_seconds):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        await self.redis.aclose()
